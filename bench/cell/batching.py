"""Examples -> batches: padding and the layout of a text-to-text example, shared by training, the
objectives, the step probe and evaluation.

A text-to-text example is a prompt and a target: an encoder-decoder reads the prompt and predicts
the target; a decoder-only model reads both in one sequence, the prompt masked out of the loss.
"""

from __future__ import annotations

import torch

IGNORE = -100  # a label position that no loss counts (prompt tokens, padding)


def lm_example(kind: str, prompt: list[int], target: list[int]) -> dict:
    if kind == "encoder-decoder":
        return {"input_ids": prompt, "labels": target}
    return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


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
