"""Training objectives for text-to-text training on tasks with answer options.

- lm: cross-entropy of the gold answer's tokens (the model's own loss).
- tfew: T-Few's L_LM + L_UL + L_LN (Liu et al. 2022): the LM loss, an unlikelihood loss that pushes
  down every token of the wrong options (-log(1 - p)), and a softmax cross-entropy over the options'
  length-normalised log-likelihoods (mean log-probability per token).
Tasks without answer options (generation, classifier heads) always train with `lm`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from bench.cell.batching import collate, options_collate
from bench.cell.evaluate import token_logprobs
from bench.errors import Unsupported
from bench.tasks.features import lm_example


@dataclass(frozen=True)
class Objective:
    """How a training step turns features into a batch, and a batch into the loss: the sum of its named terms
    (lm; or T-Few's lm, ul, ln), which training records one by one (train.first_loss_terms, final_loss_terms)."""

    name: str
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    terms: Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]]

    def loss(self, model, batch: dict) -> torch.Tensor:
        return sum(self.terms(model, batch).values())


def lm_loss(model, batch: dict) -> torch.Tensor:
    """The model's own loss: token cross-entropy, or its classification head's."""
    return model(**batch).loss


def lm_terms(model, batch: dict) -> dict[str, torch.Tensor]:
    return {"lm": lm_loss(model, batch)}


def objective_for(name: str, bundle, task_type: str, tfew_lm: str = "examples",
                  unlikelihood_offset: float = 0.0, unlikelihood: bool = True) -> Objective:
    pad = bundle.tokenizer.pad_token_id
    if name in ("lm", "head"):  # the model's own loss: token cross-entropy, or its classification head's
        return Objective(name, partial(collate, pad_id=pad), lm_terms)
    if bundle.head != "lm" or task_type not in ("classification", "multiple_choice"):
        raise Unsupported("the tfew objective scores answer options: it needs a text-to-text model and a "
                          "classification or multiple-choice task")
    return Objective("tfew", partial(_tfew_collate, kind=bundle.kind, pad_id=pad),
                     partial(_tfew_terms_of_batch, lm_over=tfew_lm, ul_offset=unlikelihood_offset,
                             unlikelihood=unlikelihood))


def _tfew_collate(features: list[dict], kind: str, pad_id: int) -> dict[str, torch.Tensor]:
    batch, example, is_gold = option_batch(features, kind, pad_id)
    return {**batch, "option_example": torch.tensor(example), "option_gold": torch.tensor(is_gold)}


def _tfew_terms_of_batch(model, batch: dict, lm_over: str, ul_offset: float,
                         unlikelihood: bool = True) -> dict[str, torch.Tensor]:
    """The terms of a batch; without `unlikelihood`, L_UL is left out of the loss and of the recorded terms."""
    batch = dict(batch)
    terms = tfew_terms(model, batch, batch.pop("option_example"), batch.pop("option_gold"), lm_over, ul_offset)
    if not unlikelihood:
        del terms["ul"]
    return terms


def option_batch(features: list[dict], kind: str, pad_id: int) -> tuple[dict, list[int], list[int]]:
    """Every (example, option) pair as one padded batch, with each pair's example and gold flag; an
    encoder-decoder's prompts once each (batching.options_collate: its encoder runs once per example)."""
    example = [i for i, f in enumerate(features) for _ in f["choice_ids"]]
    is_gold = [int(j == f["gold"]) for f in features for j in range(len(f["choice_ids"]))]
    if kind == "encoder-decoder":
        return options_collate([f["prompt_ids"] for f in features], [f["choice_ids"] for f in features],
                               pad_id), example, is_gold
    pairs = [lm_example(kind, f["prompt_ids"], option) for f in features for option in f["choice_ids"]]
    return collate(pairs, pad_id), example, is_gold


def tfew_terms(model, batch: dict, example, is_gold, lm_over: str = "examples",
               ul_offset: float = 0.0) -> dict[str, torch.Tensor]:
    """T-Few's three terms: lm, ul, ln. `example` and `is_gold`: each option's example and gold flag (lists or
    tensors, as option_batch made them). `lm_over`: "examples" (each gold option's mean log-probability, then
    their mean) or "tokens" (the mean over every gold token of the batch: T-Few's cross-entropy); `ul_offset`:
    L_UL's -log(1 - p + offset) (T-Few: 0.01).

    Written without data-dependent shapes or reads (no boolean indexing, no `.item()`), so on a GPU the host
    never waits for the device inside a step: per-example sums are scatter-adds over as many slots as options
    (an upper bound on the examples), the empty slots masked out."""
    token_logp, mask = token_logprobs(model, batch)
    weights = mask.to(token_logp.dtype)
    mean_logp = token_logp.sum(-1) / weights.sum(-1).clamp(min=1)
    index = torch.as_tensor(example, device=token_logp.device)
    is_gold = torch.as_tensor(is_gold, device=token_logp.device).bool()
    gold = is_gold.to(token_logp.dtype)
    gold_mean_logp = torch.where(is_gold, mean_logp, 0)  # not a product: a wrong option's -inf × 0 is NaN
    if lm_over == "tokens":
        gold_tokens = weights * gold.unsqueeze(-1)
        l_lm = -(torch.where(gold_tokens.bool(), token_logp, 0)).sum() / gold_tokens.sum().clamp(min=1)
    else:  # one gold option per example: the mean over examples
        l_lm = -gold_mean_logp.sum() / gold.sum()
    wrong_tokens = weights * (1 - gold).unsqueeze(-1)
    p = token_logp.exp().clamp(max=1 - 1e-6)
    unlikely = torch.log1p(-p) if ul_offset == 0 else torch.log(1 - p + ul_offset)
    l_ul = -(unlikely * wrong_tokens).sum() / wrong_tokens.sum().clamp(min=1)
    # L_LN: each example's log-softmax over its options (their number may differ), at the gold option
    slots = torch.zeros_like(mean_logp)
    present = slots.index_add(0, index, torch.ones_like(mean_logp)) > 0
    shift = torch.full_like(mean_logp, -torch.inf).scatter_reduce(0, index, mean_logp.detach(), "amax")
    shift = torch.where(present, shift, 0)  # any constant gives the same log-sum-exp; absent slots stay finite
    total = slots.index_add(0, index, (mean_logp - shift[index]).exp())
    log_norm = shift + torch.log(torch.where(present, total, 1))
    gold_logp = slots.index_add(0, index, gold_mean_logp)
    l_ln = -torch.where(present, gold_logp - log_norm, 0).sum() / present.sum()
    return {"lm": l_lm, "ul": l_ul, "ln": l_ln}
