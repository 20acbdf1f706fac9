"""Sweeps: a method's settings as grid axes, and the protocol that chooses among them.

A suite's `sweep:` (suite-wide: training settings only) or a method entry's `sweep:` (training settings and that
method's own settings) maps a setting to a list of values (every combination is a variant) or to a distribution
({log_uniform: [lo, hi]} or {uniform: [lo, hi]}), in which case `trials: N` variants are drawn, seeded by
`seed:` (default 0) and the method's label, so a suite expands to the same cells every time. Each variant is a
method entry's settings; its cells' ids hash the resolved setting as any other override does.

A sweep needs the suite's `selection:` protocol (SELECTION_KEYS): the split that chooses the setting is never
the reported split (docs/selection.md).
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.config import TRAIN_FIELDS
from bench.errors import BadInput, did_you_mean

DISTRIBUTIONS = ("log_uniform", "uniform")
RESERVED = ("trials", "seed")  # keys of a sweep that are not settings
MAX_VARIANTS = 10_000  # past any real sweep: a product that large is a typo
SELECTION_KEYS = {"heldout": float, "split": str, "sweep_seeds": int}
MAX_HELDOUT = 0.5  # more than half the training rows held out would leave the methods little to learn from


@dataclass
class Sweep:
    """Axes as written: setting -> list of values, or (distribution, lo, hi)."""

    axes: dict[str, Any] = field(default_factory=dict)
    trials: int | None = None
    seed: int = 0
    where: Callable[..., str] = lambda *k: ""

    def merged(self, inner: "Sweep") -> "Sweep":
        """This (suite-wide) sweep with a method entry's own on top: the entry's axis wins for a setting both
        name; its trials and seed too when it gives them."""
        return Sweep({**self.axes, **inner.axes}, inner.trials or self.trials,
                     inner.seed if inner.trials else self.seed, inner.where if inner.axes else self.where)

    def variants(self, label: str) -> list[dict]:
        """Each variant: {setting: value}; [{}] when nothing is swept."""
        if not self.axes:
            return [{}]
        if self.trials is None:
            return [dict(zip(self.axes, values)) for values in itertools.product(*self.axes.values())]
        import numpy as np

        rng = np.random.default_rng([self.seed, zlib.crc32(label.encode())])
        drawn: list[dict] = []
        for _ in range(self.trials):
            variant = {key: _draw(axis, rng) for key, axis in self.axes.items()}
            if variant not in drawn:  # a list-only sweep may draw the same variant twice: it runs once
                drawn.append(variant)
        return drawn


def _draw(axis, rng) -> Any:
    if isinstance(axis, list):
        return axis[int(rng.integers(len(axis)))]
    kind, lo, hi = axis
    value = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "log_uniform" else rng.uniform(lo, hi)
    return float(f"{value:.3g}")  # three significant digits: readable in tables, the same on every machine


def parse_sweep(raw: Any, where: Callable[..., str], method_keys: set[str] | None) -> Sweep:
    """A `sweep:` mapping checked: each key a training setting or (`method_keys`, None suite-wide) one of the
    method's own settings; values a non-empty list or one distribution; `trials` exactly when a distribution
    is given. Values themselves are checked where the grid resolves each variant, like any override."""
    if not isinstance(raw, dict) or not raw:
        raise BadInput("'sweep' must be a mapping of settings to lists of values (or distributions)", where())
    allowed = set(TRAIN_FIELDS) | (method_keys or set())
    axes: dict[str, Any] = {}
    for key, value in raw.items():
        if key in RESERVED:
            continue
        if key not in allowed:
            scope = "a training setting or one of this method's settings" if method_keys is not None else \
                "a training setting (a method's own settings are swept in its entry)"
            raise BadInput(f"'{key}' cannot be swept: it is not {scope}{did_you_mean(str(key), allowed)}",
                           where(key), sorted(allowed))
        axes[key] = _axis(key, value, where)
    trials, seed = raw.get("trials"), raw.get("seed", 0)
    random_axes = [k for k, v in axes.items() if isinstance(v, tuple)]
    if random_axes and trials is None:
        raise BadInput(f"'{random_axes[0]}' is a distribution: give `trials: N`, how many settings to draw",
                       where(random_axes[0]))
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 1000):
        raise BadInput(f"'trials' must be a whole number in [1, 1000], got {trials!r}", where("trials"))
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BadInput(f"'seed' must be a non-negative whole number, got {seed!r}", where("seed"))
    if not axes:
        raise BadInput("'sweep' names no setting", where())
    sweep = Sweep(axes, trials, seed, where)
    if trials is None and math.prod(len(v) for v in axes.values()) > MAX_VARIANTS:
        raise BadInput(f"the sweep's product has more than {MAX_VARIANTS:,} settings: draw `trials` instead",
                       where())
    return sweep


def _axis(key: str, value: Any, where: Callable[..., str]) -> list | tuple:
    if isinstance(value, list):
        if not value:
            raise BadInput(f"sweep '{key}' lists no value", where(key))
        if len({repr(v) for v in value}) != len(value):
            raise BadInput(f"sweep '{key}' lists a value twice", where(key))
        return value
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
        kind, bounds = next(iter(value.items()))
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and (kind == "uniform" or lo > 0)):
            need = "0 < lo < hi" if kind == "log_uniform" else "lo < hi"
            raise BadInput(f"sweep '{key}': {kind} needs [lo, hi] with {need}, got {bounds!r}", where(key))
        return kind, lo, hi
    raise BadInput(f"sweep '{key}' must be a list of values or one of {{{', '.join(DISTRIBUTIONS)}: [lo, hi]}}, "
                   f"got {value!r}", where(key), DISTRIBUTIONS)


def parse_selection(raw: Any, where: Callable[..., str]) -> tuple[dict, int | None]:
    """The suite's `selection:` -> (the TrainConfig fields of its protocol, the two-stage sweep seed count)."""
    from bench.config import check_keys

    check_keys(raw, SELECTION_KEYS, "selection key", where)
    if ("heldout" in raw) == ("split" in raw):
        raise BadInput("'selection' needs exactly one of 'heldout' (a fraction of the training rows) or 'split' "
                       "(a split of the task's own)", where())
    if "heldout" in raw:
        heldout = raw["heldout"]
        if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or not 0 < heldout <= MAX_HELDOUT:
            raise BadInput(f"'heldout' must be a fraction in (0, {MAX_HELDOUT}], got {heldout!r}", where("heldout"))
        protocol = {"selection_heldout": float(heldout)}
    else:
        if not isinstance(raw["split"], str) or not raw["split"]:
            raise BadInput(f"'split' must be a split's name, got {raw['split']!r}", where("split"))
        protocol = {"selection_split": raw["split"]}
    stage_seeds = raw.get("sweep_seeds")
    if stage_seeds is not None and (isinstance(stage_seeds, bool) or not isinstance(stage_seeds, int)
                                    or stage_seeds < 1):
        raise BadInput(f"'sweep_seeds' must be a positive whole number, got {stage_seeds!r}", where("sweep_seeds"))
    return protocol, stage_seeds
