"""Evaluation: predictions for an EvalSet, then the task's metrics.

Three ways to predict, by head and task type:
- classifier head: argmax of the logits (or the single output, for regression);
- rank classification (text-to-text classification and multiple choice): the answer option whose
  tokens have the highest total log-likelihood given the prompt (or mean per token, with the task's
  length_normalize);
- generation: greedy or beam search, decoded without special tokens.
A task with several templates is evaluated with each; its score is the median over templates (T-Few).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import torch

from bench.cell.batching import IGNORE, collate, lm_example, to_device
from bench.models import is_encoder_decoder
from bench.tasks import TaskSpec, metrics
from bench.tasks.features import EvalSet


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i: i + size]


@torch.no_grad()
def predict(bundle, model, evalset: EvalSet, task: TaskSpec, batch_size: int, device,
            autocast=contextlib.nullcontext) -> list:
    model.eval()
    pad = bundle.tokenizer.pad_token_id
    preds: list = []
    if bundle.head == "classifier":
        for chunk in _batches(evalset.features, batch_size):
            with autocast():
                logits = model(**to_device(collate(chunk, pad), device)).logits.float()
            preds += logits.squeeze(-1).tolist() if task.type == "regression" else logits.argmax(-1).tolist()
        return preds
    if evalset.choices is not None:
        pairs = [lm_example(bundle.kind, f["input_ids"], c)
                 for f, options in zip(evalset.features, evalset.choices) for c in options]
        scores: list[float] = []
        for chunk in _batches(pairs, batch_size):
            with autocast():
                scores += sequence_logprob(model, to_device(collate(chunk, pad), device), task.length_normalize)
        preds, start = [], 0
        for options in evalset.choices:
            row = scores[start: start + len(options)]
            preds.append(max(range(len(options)), key=row.__getitem__))
            start += len(options)
        return preds
    left = bundle.kind == "decoder"  # decoders continue the prompt, so pad on the left
    for chunk in _batches(evalset.features, batch_size):
        batch = to_device(collate(chunk, pad, left=left), device)
        with autocast():
            out = model.generate(**batch, max_new_tokens=task.generation["max_new_tokens"],
                                 num_beams=task.generation["num_beams"], do_sample=False,
                                 pad_token_id=pad, eos_token_id=bundle.tokenizer.eos_token_id)
        if left:
            out = out[:, batch["input_ids"].shape[1]:]
        preds += [t.strip() for t in bundle.tokenizer.batch_decode(out, skip_special_tokens=True)]
    return preds


def token_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each labelled token (labels != -100) under the model, and the label mask.

    Works for encoder-decoders (labels are the decoder's targets) and decoders (labels align with
    input_ids; position t predicts token t+1), also when prompt tuning prepends virtual tokens.
    """
    batch = dict(batch)
    labels = batch.pop("labels")
    decoder_only = not is_encoder_decoder(model)
    # encoder-decoders need the labels to build decoder inputs; decoders read them from input_ids
    logits = model(**batch, **({} if decoder_only else {"labels": labels})).logits
    if logits.shape[1] != labels.shape[1]:  # decoder: prompt tuning prepends virtual tokens
        logits = logits[:, -labels.shape[1]:]
    if decoder_only:
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask, mask


def sequence_logprob(model, batch: dict, length_normalize: bool = False) -> list[float]:
    """Log-likelihood of each row's labelled tokens: the sum, or the mean per token."""
    token_logp, mask = token_logprobs(model, batch)
    total = token_logp.sum(-1)
    if length_normalize:
        total = total / mask.sum(-1).clamp(min=1)
    return total.tolist()


def evaluate(bundle, model, evalset: EvalSet, task: TaskSpec, batch_size: int, device,
             autocast=contextlib.nullcontext, predictor: Callable = predict) -> dict:
    """{metric: value} on the 0-100 scale, for the task's metrics (predictions by `predictor`, which
    takes predict's arguments)."""
    preds = predictor(bundle, model, evalset, task, batch_size, device, autocast)
    return metrics.compute(task.metrics, preds, evalset.gold)


def evaluate_all(bundle, model, evalsets: dict[str, list[EvalSet]], task: TaskSpec, batch_size: int, device,
                 autocast=contextlib.nullcontext, predict_main: Callable = predict) -> tuple[dict, list[dict]]:
    """Scores over every evaluation split and template.

    Returns ({metric: median over templates} for the main split plus {metric_<split>: ...} for more
    splits (MNLI's mismatched), [{"split", "template", "metrics"}] for every evaluation).
    `predict_main` predicts the main split under its first template (a cell times it there:
    bench.cell.measure.TimedPrediction); `predict` predicts every other evaluation.
    """
    merged: dict = {}
    details = []
    for split, sets in evalsets.items():
        runs = [evaluate(bundle, model, es, task, batch_size, device, autocast,
                         predict_main if split == "" and i == 0 else predict) for i, es in enumerate(sets)]
        details += [{"split": split or "main", "template": i, "metrics": r} for i, r in enumerate(runs)]
        for name in task.metrics:
            values = [r[name] for r in runs if r[name] is not None]
            merged[f"{name}_{split}" if split else name] = statistics.median(values) if values else None
    return merged, details
