"""Masked-LM training examples from a task's text: what a MAD-X language adapter is trained on (a stage with
`objective: mlm`, bench/plan/stages.py), BERT's recipe (Devlin et al. 2019, §3.1).

Each row's text columns are tokenised together (as a classifier reads them, truncated to max_length); of its
non-special tokens, masked_count of them are chosen, drawn from a generator seeded by the cell's seed
and the row's position, so every method sees the same masks under a seed. A chosen token becomes the mask token
with probability 0.8, a uniformly drawn vocabulary token with 0.1, and stays itself with 0.1; `labels` hold the
original ids at the chosen positions and IGNORE elsewhere, so the model's own loss is the masked-LM loss.
"""

from __future__ import annotations

import random

from bench.figures import MASK_SHARE
from bench.tasks.features import IGNORE
from bench.tasks.spec import TaskSpec

MLM = "mlm"  # the type of a stage mixture trained by masked-LM (not a task type a definition may give)
REPLACE = (0.8, 0.1)  # of the chosen tokens: the mask token, a random token (the rest stay)


def masked_count(n: int) -> int:
    """How many of n maskable tokens are masked: MASK_SHARE of them rounded half up, at least 1."""
    return max(1, int(MASK_SHARE * n + 0.5))


def mask_tokens(ids: list[int], special: set[int], mask_id: int, vocab: int, draw: random.Random) -> dict:
    """{input_ids, labels} of one tokenised row (see the module's docstring)."""
    candidates = [i for i, t in enumerate(ids) if t not in special]
    if not candidates:
        return {"input_ids": list(ids), "labels": [IGNORE] * len(ids)}
    chosen = sorted(draw.sample(candidates, masked_count(len(candidates))))
    inputs, labels = list(ids), [IGNORE] * len(ids)
    for i in chosen:
        labels[i] = ids[i]
        roll = draw.random()
        if roll < REPLACE[0]:
            inputs[i] = mask_id
        elif roll < REPLACE[0] + REPLACE[1]:
            inputs[i] = draw.randrange(vocab)
    return {"input_ids": inputs, "labels": labels}


def masked_features(task: TaskSpec, bundle, rows: list[dict], max_length: int, seed: int) -> list[dict]:
    """A masked-LM example per row of `task` (a stage mixture's member)."""
    tok = bundle.tokenizer
    if tok.mask_token_id is None:
        raise ValueError(f"the tokenizer of {bundle.spec.name} has no mask token: masked-LM needs one")
    special = set(tok.all_special_ids)
    out = []
    for position, row in enumerate(rows):
        enc = tok(*[str(task.value(row, c)) for c in task.text], truncation=True, max_length=max_length)
        out.append(mask_tokens(enc["input_ids"], special, tok.mask_token_id, len(tok),
                               random.Random(f"mlm-{seed}-{position}")))
    return out
