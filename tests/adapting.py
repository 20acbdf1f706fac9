"""A tiny (or meta-device) model with a method applied at its defaults, as several test files need it."""

from __future__ import annotations

import torch

from bench import methods
from bench.config import TrainConfig
from bench.methods.base import Adapted, ApplyContext
from bench.models import REGISTRY, Bundle, load_bundle


def adapt(model: str, method: str, seed: int = 0, total_steps: int = 10, meta: bool = False,
          attention: str = "auto") -> tuple[Bundle, Adapted]:
    """Classification with 2 labels on encoders, generation elsewhere; on `meta`, no weights are allocated."""
    spec = REGISTRY[model]
    encoder = spec.kind == "encoder"
    bundle = load_bundle(spec, "classification" if encoder else "generation", 2 if encoder else None, seed, meta=meta,
                         attention=attention)
    chosen = methods.get(method)
    with torch.device("meta" if meta else "cpu"):
        adapted = chosen.apply(bundle.model, chosen.resolve({}, spec.arch, str),
                               ApplyContext(bundle, TrainConfig(), total_steps))
    return bundle, adapted


def token_batch(rows: int = 8, length: int = 16, classes: bool = True) -> dict:
    """Fixed random token ids, a full attention mask, and labels: alternating classes, or the ids themselves."""
    ids = torch.randint(5, 100, (rows, length), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(rows) % 2 if classes else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
