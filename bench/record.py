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

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "unsupported", "oom", "timeout")
SECTIONS = ("params", "memory", "time", "flops", "scores", "train", "env")
# The measured figures of each section, defined in bench/measure.py, bench/probe.py and docs/measurement.md.
MEMORY_FIGURES = ("weights_bytes", "trainable_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes",
                  "workspace_bytes", "predicted_peak_bytes", "device_peak_allocated_bytes",
                  "device_peak_reserved_bytes", "eval_peak_allocated_bytes", "nvml_peak_bytes",
                  "cpu_peak_rss_bytes", "peak_bytes", "peak_source")
TIME_FIGURES = ("load_s", "train_s", "eval_s", "step_s_median", "train_samples_per_s", "train_tokens_per_s")
FLOP_FIGURES = ("train_total", "inference_per_example", "cost_model_train_total", "cost_model_inference_per_example")


def new_record(cell) -> dict[str, Any]:
    """An empty record for `cell` (a grid.Cell): every figure null."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cell": {"id": cell.id, "suite": cell.suite, "label": cell.label, "method": cell.method,
                 "method_family": cell.family, "model": cell.model.name, "task": cell.task.name,
                 "seed": cell.seed, "config": cell.config},
        "status": None,
        "error": None,
        "params": {"total": None, "trainable": None, "trainable_pct": None, "stored": None, "stored_bytes": None},
        "memory": dict.fromkeys(MEMORY_FIGURES),
        "time": dict.fromkeys(TIME_FIGURES),
        "flops": dict.fromkeys(FLOP_FIGURES),
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
    """Why a loaded document is not a usable record (empty list when it is)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    out = []
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        out.append(f"schema_version {version!r} is not {SCHEMA_VERSION}")
    cell = record.get("cell")
    if not isinstance(cell, dict) or not all(k in cell for k in ("id", "method", "model", "task", "seed")):
        out.append("no cell identity (id, method, model, task, seed)")
    if record.get("status") not in STATUSES:
        out.append(f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
    for section in SECTIONS:
        if section in record and not isinstance(record[section], dict):
            out.append(f"'{section}' is not an object")
    return out
