"""The record: one JSON document per cell, the only thing the harness keeps of a run.

Every figure is null until measured, never a sentinel. `schema_version` changes whenever a field
changes meaning; readers refuse versions they do not know instead of misreading them.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import traceback
from typing import Any

from bench import figures

SCHEMA_VERSION = 1
# ok: a result. Every other status is not one: never ranked, averaged or plotted as a score.
# failed: an exception; unsupported: the method cannot serve this model (or machine); oom: out of memory
# (an allocator error, or a kill the kernel's OOM killer is known to have made); timeout: killed at
# cell_timeout_s; killed: ended by a signal for another (or an unknown) reason; diverged: the loss became
# non-finite (`train.diverged_at_step`); interrupted: the runner was stopped (SIGINT/SIGTERM) mid-cell.
STATUSES = ("ok", "failed", "unsupported", "oom", "timeout", "killed", "diverged", "interrupted")
SECTIONS = ("params", "memory", "time", "flops", "scores", "train", "env")
# The sections of a cell's measured numbers: every figure section and `train` (a flattened row's `section.name`
# columns, what trackers log, what a killed cell's record keeps of what it measured).
NUMBER_SECTIONS = (*figures.SECTIONS, "train")


class FigureSection(dict):
    """A record's section of figures (params, memory, time, flops): a dict that takes only the figures the
    registry declares for it (bench/figures.py), so a misspelt or undeclared figure fails where it is written,
    not silently in a report. It is written to JSON as the plain object it is."""

    def __init__(self, section: str):
        super().__init__(dict.fromkeys(figures.names(section)))
        self.section = section

    def _check(self, keys) -> None:
        unknown = [k for k in keys if k not in self]
        if unknown:
            raise KeyError(f"{', '.join(f'{self.section}.{k}' for k in unknown)}: not a figure of the registry "
                           f"(bench/figures.py); {self.section} figures: {', '.join(self)}")

    def __setitem__(self, key, value) -> None:
        self._check([key])
        super().__setitem__(key, value)

    def update(self, *args, **kwargs) -> None:
        values = dict(*args, **kwargs)
        self._check(values)
        super().update(values)

    def setdefault(self, key, default=None):
        self._check([key])
        return super().setdefault(key, default)

    def __reduce__(self):  # pickled (a record returned from a Ray task or a Slurm job): as a plain dict
        return dict, (dict(self),)


def new_record(cell) -> dict[str, Any]:
    """An empty record for `cell` (a cellspec.Cell): every figure null, each figure section taking only the
    figures the registry declares."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cell": {"id": cell.id, "suite": cell.suite, "label": cell.label, "method": cell.method,
                 "method_family": cell.family, "model": cell.model.name, "task": cell.task.name,
                 "seed": cell.seed, "config": cell.config, **({"sweep": cell.sweep} if cell.sweep else {}),
                 **({"sweep_stage": cell.sweep_stage} if cell.sweep_stage else {}),
                 **({"stage": cell.stage} if cell.stage else {}),
                 **({"init_from": cell.init_from} if cell.init_from else {}),
                 **({"stage_refs": list(cell.stage_refs)} if cell.stage_refs else {})},
        "status": None,
        "error": None,
        **{section: FigureSection(section) for section in figures.SECTIONS},
        "scores": {"main_metric": cell.task.evaluation.main_metric, "metrics": {}},
        "train": {},
        "env": {"seed": cell.seed},
        "created_at": None,
    }


def finish(record: dict, status: str, error: dict | None = None) -> dict:
    assert status in STATUSES, status
    _null_non_finite(record)
    record["status"] = status
    record["error"] = error
    record["created_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return record


def _null_non_finite(value):
    """NaN and infinities are not JSON and not numbers anyone can use: they become null in place."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, float) and not math.isfinite(item):
            value[key] = None
        else:
            _null_non_finite(item)


def error_info(exc: BaseException) -> dict[str, Any]:
    """Type, message, the innermost frame (file:line in function) and the full traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = None
    if frames:
        f = frames[-1]
        where = f"{os.path.relpath(f.filename) if not f.filename.startswith('<') else f.filename}:{f.lineno} in {f.name}"
    return {"type": type(exc).__name__, "message": str(exc), "where": where,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def problems(record: Any) -> list[str]:
    """Why a loaded document is not a usable record (empty list when it is): the one shape check
    every reader (store, report, compare, regress) relies on, so a record that passes cannot crash them."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    out = []
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        out.append(f"schema_version {version!r} is not {SCHEMA_VERSION}")
    cell = record.get("cell")
    if not isinstance(cell, dict) or not all(k in cell for k in ("id", "method", "model", "task", "seed")):
        out.append("no cell identity (id, method, model, task, seed)")
    else:
        for key in ("id", "method", "model", "task"):
            if not isinstance(cell[key], str):
                out.append(f"cell.{key} is not a string")
        if not isinstance(cell["seed"], int) or isinstance(cell["seed"], bool):
            out.append("cell.seed is not an integer")
        if not isinstance(cell.get("suite"), str):
            out.append("cell.suite is not a string")
        for key in ("label", "method_family"):
            if key not in cell or (cell[key] is not None and not isinstance(cell[key], str)):
                out.append(f"cell.{key} is neither null nor a string")
        if not isinstance(cell.get("config"), dict):
            out.append("cell.config is not an object")
    if record.get("status") not in STATUSES:
        out.append(f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
    if record.get("error") is not None and not isinstance(record["error"], dict):
        out.append("'error' is neither null nor an object")
    if record.get("created_at") is not None and not isinstance(record["created_at"], str):
        out.append("'created_at' is neither null nor a string")
    for section in SECTIONS:
        if not isinstance(record.get(section), dict):
            out.append(f"'{section}' is not an object")
    scores = record.get("scores")
    if isinstance(scores, dict):
        metrics = scores.get("metrics", {})
        if not isinstance(metrics, dict):
            out.append("scores.metrics is not an object")
        else:
            out += [f"scores.metrics.{name} = {value!r} is not a score (null, or a finite number in [-100, 100])"
                    for name, value in metrics.items() if not _score_or_null(value)]
        if scores.get("main_metric") is not None and not isinstance(scores["main_metric"], str):
            out.append("scores.main_metric is not a string")
    for section, numeric in _NUMERIC_FIGURES.items():
        values = record.get(section)
        if isinstance(values, dict):
            bad = sorted(name for name, value in values.items() if name in numeric and not _number_or_null(value))
            if bad:
                out.append(f"{section}: {', '.join(bad)} not a number")
    return out


# Per section, the registered figures that must be numbers (or null); worked out once, as every record a
# reader loads is checked against them.
_NUMERIC_FIGURES = {section: frozenset(f.name for f in figures.FIGURES.values()
                                       if f.section == section and f.unit != "text") for section in figures.SECTIONS}


def _score_or_null(value: Any) -> bool:
    """Every metric is on a 0-100 scale (correlations and MCC on -100-100): anything else is not a result."""
    return value is None or (_number_or_null(value) and math.isfinite(value) and -100 <= value <= 100)


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
