"""Examples -> batches: the seeded order training draws them in, padding and what a batch holds (tokens,
positions); shared by training, the objectives, the step probe and evaluation. The layout of one text-to-text
example is bench/tasks/features.py's `lm_example`."""

from __future__ import annotations

import torch

from bench.tasks.features import IGNORE


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The batch on `device`. To CUDA each tensor goes through pinned memory and is copied without waiting:
    a copy from pageable memory makes the host wait until the device has run everything queued before it,
    a synchronisation in every training step."""
    if torch.device(device).type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


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


def options_collate(prompts: list[list[int]], options: list[list[list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """An encoder-decoder's rank-classification batch with each prompt once: the encoder's inputs one row per
    prompt, the decoder's labels one row per (prompt, option), and `encoder_rows`, each label row's prompt row
    (bench.cell.evaluate.token_logprobs repeats the encoder's states along it, as T-Few's EncoderDecoder does)."""
    out = collate([{"input_ids": p} for p in prompts], pad_id)
    labels = [option for opts in options for option in opts]
    out["labels"] = _pad(labels, max(map(len, labels)), IGNORE, False)
    out["encoder_rows"] = torch.tensor([i for i, opts in enumerate(options) for _ in opts], dtype=torch.long)
    return out


def _pad(seqs: list[list[int]], width: int, value: int, left: bool) -> torch.Tensor:
    rows = [[value] * (width - len(s)) + s if left else s + [value] * (width - len(s)) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


LENGTH_GROUP = 50  # batches per length-sorted group, as HF's LengthGroupedSampler (its megabatch_mult)


def batches(features: list[dict], batch_size: int, seed: int, balanced: bool = False, by_length: bool = False):
    """Endless batches: a fresh seeded permutation each epoch, batches spanning epoch boundaries; or,
    `balanced`, each batch drawn with replacement with every example weighted by 1 / its class's count,
    so every class is drawn as often (T-Few's WeightedRandomSampler). `by_length`: the permutation is cut
    into groups of LENGTH_GROUP batches, each sorted longest first, so a batch pads little (and the first
    batch of a group is its longest: an out-of-memory shows at once)."""
    if not features:
        raise ValueError("no training examples to draw batches from")
    gen = torch.Generator().manual_seed(seed)
    if balanced:
        classes = [f.get("gold", f.get("labels")) for f in features]
        if not all(isinstance(c, int) for c in classes):
            raise ValueError("balanced_batches needs a class per training example (a classification or "
                             "multiple-choice task)")
        counts = {c: classes.count(c) for c in set(classes)}
        weights = torch.tensor([1.0 / counts[c] for c in classes], dtype=torch.float64)
        while True:
            drawn = torch.multinomial(weights, batch_size, replacement=True, generator=gen)
            yield [features[i] for i in drawn.tolist()]
    order: list[int] = []
    group = batch_size * (LENGTH_GROUP if by_length else 1)
    while True:
        while len(order) < group:
            order += torch.randperm(len(features), generator=gen).tolist()
        chunk, order = order[:group], order[group:]
        if by_length:
            chunk.sort(key=lambda i: -len(features[i]["input_ids"]))
        for start in range(0, group, batch_size):
            yield [features[i] for i in chunk[start:start + batch_size]]


def _decoder_targets(batch: dict, encoder_decoder: bool) -> torch.Tensor | None:
    """The target ids an encoder-decoder's decoder runs on (None for other models and heads).
    The model's kind decides, not the shapes: inputs and targets can have the same width."""
    labels = batch.get("labels")
    return labels if encoder_decoder and labels is not None and labels.dim() == 2 else None


def tokens_in(batch: dict, encoder_decoder: bool) -> int:
    """Non-padding tokens a step processes: inputs, plus decoder targets of encoder-decoders."""
    targets = _decoder_targets(batch, encoder_decoder)
    n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return n + (int((targets != IGNORE).sum()) if targets is not None else 0)


def positions_in(batch: dict, encoder_decoder: bool) -> int:
    """Positions a step computes on, padding included: inputs, plus decoder targets of encoder-decoders."""
    targets = _decoder_targets(batch, encoder_decoder)
    return batch["input_ids"].numel() + (targets.numel() if targets is not None else 0)
