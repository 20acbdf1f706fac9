"""The explore page's curve picker: each cell's training curve (loss, learning rate, gradient norm, tokens/s) and
evaluation curve, embedded compactly so that a reader picks a cell and assets/curves.js draws them.

The curves files (bench/cell/curves.py) hold up to 500 points per cell; a 700-cell grid would embed 350,000
points. So the page holds at most POINT_BUDGET training points over all its cells (each cell at most
MAX_POINTS, at least MIN_POINTS: a grid beyond POINT_BUDGET / MIN_POINTS cells grows by MIN_POINTS a cell),
every value to SIGNIFICANT digits. A cell's stored points are cut into that many runs of consecutive points
(equal runs, as numpy.array_split cuts them); each run becomes one point:

- step: the run's last step; loss, grad_norm, tokens_per_s: the mean of the run's known values (null when it has
  none; the stored points are window means of equal windows, so a run's mean is the mean over its steps, except
  for a shorter last window); lr: the run's last value (the rate at that step, as the curve file keeps it).

Evaluations during training are few (one per `eval_every` steps) and kept as stored, at most MAX_POINTS of
them (the same runs, each its last evaluation). Only cells of rows the explore table shows (an ok seed in their
aggregate) are listed, with their status: a failed seed's curve shows where its training went wrong.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from bench.fmt import missing
from bench.report.aggregate import KEYS

POINT_BUDGET = 20_000
MAX_POINTS = 120
MIN_POINTS = 12
SIGNIFICANT = 4
SERIES = ("loss", "lr", "grad_norm", "tokens_per_s")
MEANS = ("loss", "grad_norm", "tokens_per_s")  # lr: the run's last value


def rounded(value) -> float | None:
    """`value` to SIGNIFICANT digits; null for an unknown or non-finite value."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{SIGNIFICANT}g}")


def points_per_cell(cells: int) -> int:
    return max(MIN_POINTS, min(MAX_POINTS, POINT_BUDGET // max(cells, 1)))


def runs(points: list[dict], limit: int) -> list[list[dict]]:
    """`points` cut into at most `limit` runs of consecutive points, lengths differing by at most one."""
    return [list(run) for run in np.array_split(np.array(points, dtype=object), min(limit, len(points)))]


def compact(curve: dict, limit: int) -> dict:
    """One cell's curve as the page embeds it: {"step": [...], series: [...], "eval_step": [...], "eval": [...],
    "split": the evaluations' split (null without evaluations), "stored": the training points the file holds}."""
    train = runs(curve["train"], limit) if curve["train"] else []
    out: dict = {"stored": len(curve["train"]), "step": [run[-1]["step"] for run in train]}
    for key in SERIES:
        if key in MEANS:
            known = [[p[key] for p in run if p.get(key) is not None] for run in train]
            out[key] = [rounded(statistics.fmean(k)) if k else None for k in known]
        else:
            out[key] = [rounded(run[-1].get(key)) for run in train]
    evals = runs(curve["evals"], limit) if curve["evals"] else []
    out["eval_step"] = [run[-1]["step"] for run in evals]
    out["eval"] = [rounded(run[-1]["eval"]) for run in evals]
    out["split"] = evals[-1][-1].get("split") if evals else None
    return out


def curve_blob(frame: pd.DataFrame, rows: pd.DataFrame, curves: dict[str, dict]) -> tuple[list[dict], list]:
    """(the cells with a curve, in the rows' order then by seed; for each explore row, the indices of its cells).
    A cell: {"id", "seed", "status", "row": its explore row, "curve": compact(...)}."""
    if frame.empty or rows.empty or not curves:
        return [], [[] for _ in range(len(rows))]
    row_of = {tuple(None if missing(v) else v for v in r): i for i, r in enumerate(rows[KEYS].itertuples(False))}
    listed = []
    for _, record in frame.sort_values("seed", kind="stable").iterrows():
        row = row_of.get(tuple(None if missing(record[k]) else record[k] for k in KEYS))
        if row is not None and record["id"] in curves:
            listed.append((row, record))
    listed.sort(key=lambda item: item[0])
    limit = points_per_cell(len(listed))
    cells, by_row = [], [[] for _ in range(len(rows))]
    for row, record in listed:
        by_row[row].append(len(cells))
        cells.append({"id": str(record["id"]), "seed": None if missing(record["seed"]) else int(record["seed"]),
                      "status": str(record["status"]), "row": row, "curve": compact(curves[record["id"]], limit)})
    return cells, by_row
