"""Evaluation: predictions for an EvalSet, then the task's metrics.

Three ways to predict, by head and task type:
- classifier head: argmax of the logits (or the single output, for regression);
- rank classification (text-to-text classification): the answer whose tokens have the highest total
  log-likelihood given the prompt (or mean per token, with length_normalize);
- generation: greedy or beam search, decoded without special tokens.
"""

from __future__ import annotations

import contextlib

import torch

from bench.tasks import TaskSpec, metrics
from bench.tasks.features import IGNORE, EvalSet, collate, lm_example


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def predict(bundle, model, evalset: EvalSet, task: TaskSpec, batch_size: int, device,
            autocast=contextlib.nullcontext, length_normalize: bool = False) -> list:
    model.eval()
    pad = bundle.tokenizer.pad_token_id
    preds: list = []
    if bundle.head == "classifier":
        for chunk in _batches(evalset.features, batch_size):
            with autocast():
                logits = model(**_to(collate(chunk, pad), device)).logits.float()
            preds += logits.squeeze(-1).tolist() if task.type == "regression" else logits.argmax(-1).tolist()
        return preds
    if evalset.choices is not None:
        pairs = [lm_example(bundle.kind, f["input_ids"], c) for f in evalset.features for c in evalset.choices]
        scores: list[float] = []
        for chunk in _batches(pairs, batch_size):
            with autocast():
                scores += sequence_logprob(model, _to(collate(chunk, pad), device), length_normalize)
        n = len(evalset.choices)
        return [max(range(n), key=lambda j: scores[i * n + j]) for i in range(len(evalset.features))]
    left = bundle.kind == "decoder"  # decoders continue the prompt, so pad on the left
    for chunk in _batches(evalset.features, batch_size):
        batch = _to(collate(chunk, pad, left=left), device)
        with autocast():
            out = model.generate(**batch, max_new_tokens=task.generation["max_new_tokens"],
                                 num_beams=task.generation["num_beams"], do_sample=False,
                                 pad_token_id=pad, eos_token_id=bundle.tokenizer.eos_token_id)
        if left:
            out = out[:, batch["input_ids"].shape[1]:]
        preds += [t.strip() for t in bundle.tokenizer.batch_decode(out, skip_special_tokens=True)]
    return preds


def sequence_logprob(model, batch: dict, length_normalize: bool = False) -> list[float]:
    """Log-likelihood of each row's labelled tokens (labels != -100) under the model."""
    labels = batch.pop("labels")
    decoder_only = _is_decoder(model)
    # encoder-decoders need the labels to build decoder inputs; decoders read them from input_ids
    logits = model(**batch, **({} if decoder_only else {"labels": labels})).logits
    if logits.shape[1] != labels.shape[1]:  # decoder: prompt tuning prepends virtual tokens
        logits = logits[:, -labels.shape[1]:]
    if decoder_only:  # position t predicts token t+1
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    total = token_logp.sum(-1)
    if length_normalize:
        total = total / mask.sum(-1).clamp(min=1)
    return total.tolist()


def _is_decoder(model) -> bool:
    config = getattr(model, "config", None)
    return not getattr(config, "is_encoder_decoder", False)


def evaluate(bundle, model, evalset: EvalSet, task: TaskSpec, batch_size: int, device,
             autocast=contextlib.nullcontext, length_normalize: bool = False) -> dict:
    """{metric: value} on the 0-100 scale, for the task's metrics."""
    preds = predict(bundle, model, evalset, task, batch_size, device, autocast, length_normalize)
    return metrics.compute(task.metrics, preds, evalset.gold)
