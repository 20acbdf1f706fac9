"""Rows -> token ids, for the two heads a model can have.

- "classifier": the text columns go through the tokenizer as a (pair of) sequence(s); the label is
  the class index (or a float for regression).
- "lm" (text-to-text): a template renders the input; the target is the gold answer option
  (classification: the label's word; multiple choice: the row's option) or the reference text
  (generation). Decoder-only models see prompt + target in one sequence, the prompt masked out of
  the loss. Evaluation scores every answer option (rank classification) or generates.
In-context learning prepends rendered demonstrations (with their answers) to every prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from bench.tasks import Prompt, TaskSpec
from bench.tasks.data import field_value

IGNORE = -100
DEMO_SEPARATOR = "\n\n"


@dataclass
class EvalSet:
    """What evaluation needs: model inputs per example, plus gold labels or references."""

    features: list[dict]  # input ids per example (prompts only for "lm")
    gold: list  # class index / float per example, or a list of reference strings
    choices: list[list[list[int]]] | None = None  # per example, the token ids of each answer option


def gold(task: TaskSpec, row: dict):
    """The row's label as a class index (names and numeric strings accepted) or a float."""
    value = field_value(row, task.label)
    if task.type == "regression":
        return float(value)
    if isinstance(value, str) and task.labels and value in task.labels:
        return task.labels.index(value)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"task '{task.name}': label {value!r} is neither a class index nor one of "
                         f"{list(task.labels or [])}") from None


def render(task: TaskSpec, prompt: Prompt, row: dict) -> str:
    return prompt.text.format(**{c: row[c] for c in task.text})


def answers(task: TaskSpec, prompt: Prompt, row: dict) -> list[str]:
    """The answer options of a row under a template (the label names when the task gives none)."""
    options = prompt.answers or task.labels
    return [a.format(**{c: row[c] for c in task.text}) for a in options]


def target_text(task: TaskSpec, prompt: Prompt, row: dict) -> str:
    if task.type in ("classification", "multiple_choice"):
        return answers(task, prompt, row)[gold(task, row)]
    return str(field_value(row, task.target))


def demonstrations(task: TaskSpec, prompt: Prompt, rows: list[dict]) -> str:
    """Solved examples for in-context learning, each rendered with its answer."""
    return "".join(f"{render(task, prompt, r)} {target_text(task, prompt, r)}{DEMO_SEPARATOR}" for r in rows)


def demonstration_ids(task: TaskSpec, tokenizer, prompt: Prompt, rows: list[dict]) -> list[int]:
    """Token ids of the in-context demonstrations: tokenised once, shared by every evaluated row, and
    (under the first template) what in-context learning keeps per task in place of trained weights."""
    return tokenizer(demonstrations(task, prompt, rows), add_special_tokens=False)["input_ids"]


def _encode_prompt(tokenizer, kind: str, text: str, max_length: int, demo_ids: list[int] = ()) -> list[int]:
    """A prompt's token ids: the row's text cut at its end when too long (as classifier inputs are);
    in-context demonstrations go before it in whatever room is left, losing their beginning first."""
    if kind == "encoder-decoder":
        head, query = [], tokenizer(text, truncation=True, max_length=max_length)["input_ids"]  # keeps </s>
    else:
        head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        query = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - len(head)]
    room = max_length - len(head) - len(query)
    shown = list(demo_ids[-room:]) if demo_ids and room > 0 else []
    return head + shown + query


def _encode_target(tokenizer, kind: str, text: str, max_length: int) -> list[int]:
    if kind == "decoder" and not text.startswith(" "):
        text = " " + text  # a new word after the prompt, as the model saw text in pretraining
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 1]
    return ids + [tokenizer.eos_token_id]


def lm_example(kind: str, prompt: list[int], target: list[int]) -> dict:
    if kind == "encoder-decoder":
        return {"input_ids": prompt, "labels": target}
    return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


def prompt_per_row(task: TaskSpec, n: int, seed: int) -> list[int]:
    """Which template each training row uses: drawn with the seed, so every method sees the same."""
    rng = random.Random(seed)
    return [rng.randrange(len(task.prompts)) for _ in range(n)]


def train_features(task: TaskSpec, bundle, rows: list[dict], max_length: int, seed: int = 0) -> list[dict]:
    tok, kind = bundle.tokenizer, bundle.kind
    if bundle.head == "classifier":
        out = []
        for row in rows:
            enc = tok(*[str(field_value(row, c)) for c in task.text], truncation=True, max_length=max_length)
            out.append({"input_ids": enc["input_ids"], "labels": gold(task, row)})
        return out
    out = []
    for row, p in zip(rows, prompt_per_row(task, len(rows), seed)):
        prompt = task.prompts[p]
        ids = _encode_prompt(tok, kind, render(task, prompt, row), max_length)
        if task.type in ("classification", "multiple_choice"):  # the target is the gold choice; T-Few needs all
            choice_ids = [_encode_target(tok, kind, a, max_length) for a in answers(task, prompt, row)]
            label = gold(task, row)
            feature = lm_example(kind, ids, list(choice_ids[label]))  # a copy: it may become `labels` itself
            feature.update(prompt_ids=ids, choice_ids=choice_ids, gold=label)
        else:
            feature = lm_example(kind, ids, _encode_target(tok, kind, target_text(task, prompt, row), max_length))
        out.append(feature)
    return out


def eval_features(task: TaskSpec, bundle, rows: list[dict], max_length: int, prompt: Prompt | None = None,
                  demos: list[dict] = ()) -> EvalSet:
    """Inputs for evaluating `rows` under one template (with `demos` prepended for in-context learning)."""
    tok, kind = bundle.tokenizer, bundle.kind
    if bundle.head == "classifier":
        feats = train_features(task, bundle, rows, max_length)
        return EvalSet([{"input_ids": f["input_ids"]} for f in feats], [f["labels"] for f in feats])
    prompt = prompt or task.prompts[0]
    demo_ids = demonstration_ids(task, tok, prompt, list(demos)) if demos else []

    def encode(row):
        return {"input_ids": _encode_prompt(tok, kind, render(task, prompt, row), max_length, demo_ids)}

    if task.type in ("classification", "multiple_choice"):
        choices = [[_encode_target(tok, kind, a, max_length) for a in answers(task, prompt, r)] for r in rows]
        return EvalSet([encode(r) for r in rows], [gold(task, r) for r in rows], choices)
    groups: dict = {}
    for i, row in enumerate(rows):  # one example per group_by value, with all its references
        key = field_value(row, task.group_by) if task.group_by else i
        groups.setdefault(key, (row, []))[1].append(str(field_value(row, task.target)))
    return EvalSet([encode(r) for r, _ in groups.values()], [refs for _, refs in groups.values()])


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
