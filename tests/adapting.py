"""Tiny (or meta-device) model bundles, bare or with a method applied at its defaults, as many test files need them."""

from __future__ import annotations

import torch

from bench import methods
from bench.config import TrainConfig
from bench.methods.base import Adapted, ApplyContext
from bench.models import REGISTRY, Bundle, load_bundle
from bench.tasks.spec import TaskSpec

# Labels a classifier head gets when a test names none: two classes, or one regressed value.
DEFAULT_LABELS = {"classification": 2, "regression": 1}


def build_bundle(model: str = "tiny-encoder", task_type: str | None = None, num_labels: int | None = None, *,
                 task: TaskSpec | None = None, seed: int = 0, **load_options) -> Bundle:
    """A fresh bundle of a registry model (tests take it as the `tiny_bundle` fixture, tests/conftest.py).

    The task: a `task`'s type and labels, else `task_type` (default: classification on encoders, generation
    elsewhere) with `num_labels` (default: 2 to classify, 1 to regress, none otherwise). load_options go to
    bench.models.load_bundle as they are (meta, pooling, weights_dtype, attention, device).
    """
    spec = REGISTRY[model]
    if task is not None:
        return load_bundle(spec, task.type, task.num_labels, seed, **load_options)
    task_type = task_type or ("classification" if spec.kind == "encoder" else "generation")
    labels = DEFAULT_LABELS.get(task_type) if num_labels is None else num_labels
    return load_bundle(spec, task_type, labels, seed, **load_options)


def adapt(model: str, method: str, seed: int = 0, total_steps: int = 10, meta: bool = False,
          attention: str = "auto", task: TaskSpec | None = None) -> tuple[Bundle, Adapted]:
    """The `task`'s head, else classification with 2 labels on encoders, generation elsewhere; on `meta`, no weights
    are allocated."""
    bundle = build_bundle(model, seed=seed, meta=meta, attention=attention, task=task)
    chosen = methods.for_cell(method)  # a registered method, or a composition of them at their defaults
    with torch.device("meta" if meta else "cpu"):
        adapted = chosen.apply(bundle.model, chosen.resolve({}, bundle.arch, str),
                               ApplyContext(bundle, TrainConfig(), total_steps))
    return bundle, adapted


def token_batch(rows: int = 8, length: int = 16, classes: bool = True) -> dict:
    """Fixed random token ids, a full attention mask, and labels: alternating classes, or the ids themselves."""
    ids = torch.randint(5, 100, (rows, length), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(rows) % 2 if classes else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def calibration_of(draw):
    """An ApplyContext.calibration from `draw(n)`, the first n collated training batches (each tensor one row an
    example): those, or with per_example one-row slices of each, as a cell collates each example alone."""

    def calibration(n: int, per_example: bool = False) -> list[dict]:
        drawn = draw(n)
        return [{k: v[i: i + 1] for k, v in b.items()} for b in drawn for i in range(len(b["input_ids"]))] \
            if per_example else drawn

    return calibration
