"""Rows -> token ids, for the two heads a model can have.

- "classifier": the text columns go through the tokenizer as a (pair of) sequence(s); the label is
  the class index (or a float for regression).
- "lm" (text-to-text): the template renders the input; the target is the label's answer word
  (classification, scored by rank classification at evaluation) or the reference text (generation).
  Decoder-only models see prompt + target in one sequence, with the prompt masked out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.tasks import TaskSpec

IGNORE = -100


@dataclass
class EvalSet:
    """What evaluation needs: model inputs per example, plus gold labels or references."""

    features: list[dict]  # input ids per example (prompts only for "lm")
    gold: list  # class index / float per example, or a list of reference strings
    choices: list[list[int]] | None = None  # answer-word token ids (rank classification)


def render(task: TaskSpec, row: dict) -> str:
    if task.template:
        return task.template.format(**{c: row[c] for c in task.text})
    return " ".join(str(row[c]) for c in task.text)


def answers(task: TaskSpec) -> list[str]:
    return list(task.verbalizers or task.labels)


def gold(task: TaskSpec, row: dict):
    """The row's label as a class index (names and numeric strings accepted) or a float."""
    value = row[task.label]
    if task.type == "regression":
        return float(value)
    if isinstance(value, str) and task.labels and value in task.labels:
        return task.labels.index(value)
    return int(value)


def _encode_prompt(tokenizer, bundle_kind: str, text: str, max_length: int) -> list[int]:
    if bundle_kind == "encoder-decoder":
        return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + ids[-(max_length - len(bos)):]  # keep the end: it holds the question


def _encode_target(tokenizer, bundle_kind: str, text: str, max_length: int) -> list[int]:
    if bundle_kind == "decoder" and not text.startswith(" "):
        text = " " + text  # a new word after the prompt, as the model saw text in pretraining
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 1]
    return ids + [tokenizer.eos_token_id]


def lm_example(kind: str, prompt: list[int], target: list[int]) -> dict:
    if kind == "encoder-decoder":
        return {"input_ids": prompt, "labels": target}
    return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


def train_features(task: TaskSpec, bundle, rows: list[dict], max_length: int) -> list[dict]:
    tok, kind = bundle.tokenizer, bundle.kind
    if bundle.head == "classifier":
        out = []
        for row in rows:
            enc = tok(*[str(row[c]) for c in task.text], truncation=True, max_length=max_length)
            out.append({"input_ids": enc["input_ids"], "labels": gold(task, row)})
        return out
    targets = answers(task) if task.type == "classification" else None
    out = []
    for row in rows:
        target = targets[gold(task, row)] if targets else str(row[task.target])
        out.append(lm_example(kind, _encode_prompt(tok, kind, render(task, row), max_length),
                              _encode_target(tok, kind, target, max_length)))
    return out


def eval_features(task: TaskSpec, bundle, rows: list[dict], max_length: int) -> EvalSet:
    tok, kind = bundle.tokenizer, bundle.kind
    if bundle.head == "classifier":
        feats = train_features(task, bundle, rows, max_length)
        return EvalSet([{"input_ids": f["input_ids"]} for f in feats], [f["labels"] for f in feats])
    if task.type == "classification":
        choices = [_encode_target(tok, kind, a, max_length) for a in answers(task)]
        feats = [{"input_ids": _encode_prompt(tok, kind, render(task, r), max_length)} for r in rows]
        return EvalSet(feats, [gold(task, r) for r in rows], choices)
    groups: dict = {}
    for row in rows:  # one example per group_by value, with all its references
        key = row[task.group_by] if task.group_by else id(row)
        groups.setdefault(key, (row, []))[1].append(str(row[task.target]))
    feats = [{"input_ids": _encode_prompt(tok, kind, render(task, r), max_length)} for r, _ in groups.values()]
    return EvalSet(feats, [refs for _, refs in groups.values()])


def collate(batch: list[dict], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest in the batch (dynamic padding); labels pad with -100."""
    out: dict[str, torch.Tensor] = {}
    width = max(len(f["input_ids"]) for f in batch)
    out["input_ids"] = _pad([f["input_ids"] for f in batch], width, pad_id, left)
    out["attention_mask"] = _pad([[1] * len(f["input_ids"]) for f in batch], width, 0, left)
    if "labels" in batch[0]:
        first = batch[0]["labels"]
        if isinstance(first, list):
            out["labels"] = _pad([f["labels"] for f in batch], max(len(f["labels"]) for f in batch), IGNORE, left)
        else:
            dtype = torch.float32 if isinstance(first, float) else torch.long
            out["labels"] = torch.tensor([f["labels"] for f in batch], dtype=dtype)
    return out


def _pad(seqs: list[list[int]], width: int, value: int, left: bool) -> torch.Tensor:
    rows = [[value] * (width - len(s)) + s if left else s + [value] * (width - len(s)) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)
