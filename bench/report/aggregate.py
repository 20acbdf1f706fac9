"""Records -> the numbers every table and plot shows. Each figure is defined once, here.

`aggregate`: one row per (model, task, method label, shots), over seeds. Only `ok` records enter
means and standard deviations (sample std, ddof=1), medians and interquartile ranges (few-shot, as T-Few
reports them: 75th - 25th percentile, linear interpolation; std and IQR need two or more seeds). A figure
fixed by the configuration is the first value its ok records hold (all its records, when none is ok). Cells
that did not end ok are counted by status and keep their reasons, so a table shows them instead of silently
dropping them.

`method_summary`: one row per (model, method label, shots), across the model's tasks:
- `score_avg`: the mean over tasks of the per-task means, only when the method has an ok score on
  every task of that model (else null, with the missing tasks in `missing_tasks`);
- each figure as its registry entry says (`Figure.tasks` in bench/figures.py): params, stored bytes and
  the measured peak the largest over tasks (what the most demanding task needs); time and FLOPs the mean
  over the tasks that have the figure (a cost per training run); the peak's source when all tasks agree;
- `cells_beside`: the most other cells that ran on the same device beside one of its ok records (`env.cells_beside`,
  the largest over seeds, then over tasks; null where no record knows), so a table can mark shared-device timings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import methods
from bench.figures import FIGURES
from bench.fmt import missing
from bench.methods.base import FAMILIES

KEYS = ["model", "task", "label", "shots"]
# Fixed by the cell's config, so identical across seeds: the first ok value stands for all.
FIRST_COLUMNS = ["method", "method_family", "main_metric", "train.gradient_checkpointing"] + [
    f.key for f in FIGURES.values() if f.seeds == "first"]
# Every other numeric figure of these sections is a mean over the ok seeds.
MEASURED_SECTIONS = ("memory.", "time.", "flops.", "forgetting.")
# Cross-task rule per figure in method_summary (see the module docstring).
OVER_TASKS = {f.key: f.tasks for f in FIGURES.values() if f.tasks}


def measured_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric figures of the measured sections (a text figure such as a source name is not one)."""
    return [c for c in frame.columns if c.startswith(MEASURED_SECTIONS) and c not in FIRST_COLUMNS
            and (frame[c].dtype.kind in "iuf"  # an int or float column: numbers only, no need to look
                 or frame[c].dropna().map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all())]


def latest_records(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One record per (model, task, method label, shots, seed): the newest.

    A suite whose settings changed leaves its older records (other cell ids) in the store; they are
    other configurations, not more seeds, so they must not enter the same mean. Returns the kept
    rows and a line per superseded record.
    """
    if frame.empty:
        return frame, []
    order = frame.sort_values("created_at", kind="stable", na_position="first")
    # a sweep's settings share a label: each is its own configuration, not a newer one of the others
    keys = ["model", "task", "label", "shots", "seed"] + (["setting"] if "setting" in frame else [])
    newest = order.drop_duplicates(keys, keep="last")
    superseded = order.drop(newest.index)
    notes = [f"{r['id']} ({r['label']} · {r['model']} · {r['task']} · seed {r['seed']}, {r['created_at']}): "
             "superseded by a newer record of another configuration; not shown" for _, r in superseded.iterrows()]
    return frame.loc[sorted(newest.index)], notes


def aggregate(frame: pd.DataFrame, task_order: list[str] | None = None) -> pd.DataFrame:
    """Rows sorted by model, task (in `task_order`, the suite's, when given; others after it,
    alphabetically), family and label."""
    if frame.empty:
        return pd.DataFrame()
    # the figures tables and plots read exist as columns (null) even when no record has them
    measured = sorted(set(measured_columns(frame)) | set(OVER_TASKS) - set(FIRST_COLUMNS))
    scores = [c for c in frame.columns if c.startswith("scores.")]
    # each record's cell, numbered 0, 1, ... in order of first appearance (null shots are a value like any other)
    cell = frame.groupby(KEYS, sort=False, dropna=False).ngroup().to_numpy()
    cells, firsts = np.unique(cell, return_index=True)
    is_ok = (frame["status"] == "ok").to_numpy()
    n = np.bincount(cell[is_ok], minlength=len(cells))
    # fixed figures: the first non-null value among the ok records, among all records when none is ok
    source = is_ok | (n[cell] == 0)
    first = frame[source].reindex(columns=FIRST_COLUMNS).groupby(cell[source]).first()
    # means, stds, medians, IQRs: over the ok records' numbers (anything else is null)
    ok = frame[is_ok]
    numbers = pd.DataFrame({c: pd.to_numeric(ok[c], errors="coerce") if c in ok else float("nan")
                            for c in ["score", *scores, *measured]}, index=ok.index, dtype=float)
    mean, std, median, iqr = _over_seeds(numbers, cell[is_ok], len(cells))
    bad = frame[~is_ok].groupby(cell[~is_ok])
    statuses = {i: dict(group["status"].value_counts()) for i, group in bad}
    reasons = {i: sorted(set(group["error"].dropna())) for i, group in bad}
    seeds = {i: sorted(group.tolist()) for i, group in frame["seed"].groupby(cell)}
    beside = _cells_beside(frame[is_ok]).groupby(cell[is_ok]).max()

    columns = {k: frame[k].iloc[firsts] for k in KEYS}
    columns["shots"] = [None if missing(s) else int(s) for s in columns["shots"]]
    columns |= {c: first[c] for c in FIRST_COLUMNS}
    columns |= {"n": n, "n_cells": np.bincount(cell), "seeds": [seeds[i] for i in cells],
                "score_mean": mean["score"], "score_std": std["score"],
                "score_median": median["score"], "score_iqr": iqr["score"]}
    for col in scores:
        columns[f"{col}.mean"], columns[f"{col}.std"] = mean[col], std[col]
        columns[f"{col}.median"] = median[col]  # a paper's statistic beside ours (report/reproduction.py)
    columns |= {c: mean[c] for c in measured}
    columns["cells_beside"] = [beside.get(i) for i in cells]
    columns["statuses"] = [statuses.get(i, {}) for i in cells]
    columns["reasons"] = [reasons.get(i, []) for i in cells]
    # a dict per row, None for null: each column's type is inferred as for rows built one by one
    values = ([None if missing(v) else v for v in column] for column in columns.values())
    out = pd.DataFrame([dict(zip(columns, row)) for row in zip(*values)])
    out["family_order"] = family_order(out["method_family"])
    rank = {task: i for i, task in enumerate(task_order or [])}
    out["task_order"] = out["task"].map(lambda t: (rank.get(t, len(rank)), t))
    out = out.sort_values(["model", "task_order", "family_order", "label"], kind="stable")
    return out.drop(columns="task_order").reset_index(drop=True)


def family_order(families: pd.Series) -> pd.Series:
    """Position of each family in FAMILIES (unknown families last), the row order of every table."""
    return families.map({f: i for i, f in enumerate(FAMILIES)}).fillna(len(FAMILIES))


def method_summary(agg: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method label, shots) across the model's tasks; `tasks` maps task -> agg row;
    `reference`, `in_context` and `uses_examples` are what the method's registry entry declares.
    score_avg: the mean over tasks of the seeds' mean; score_median_avg: of the seeds' median (few-shot)."""
    if agg.empty:
        return pd.DataFrame()
    rows = []
    for model, per_model in agg.groupby("model", sort=True):
        model_tasks = sorted(per_model["task"].unique())
        for (label, shots), group in per_model.groupby(["label", "shots"], sort=False, dropna=False):
            by_task = {r["task"]: r for _, r in group.iterrows()}
            method = _first(group, "method")
            declared = methods.declared(method)  # None for compositions and methods of unimported modules
            row = {"model": model, "label": label, "shots": None if missing(shots) else int(shots),
                   "method": method, "method_family": _first(group, "method_family"), "tasks": by_task,
                   "reference": bool(declared and declared.reference),
                   "in_context": bool(declared and declared.in_context),
                   # zero-shot sees no example, whatever `shots` its cell carries (the grid shares one setting)
                   "uses_examples": declared is None or declared.trains or declared.in_context}
            scored = {t: r["score_mean"] for t, r in by_task.items() if not missing(r["score_mean"])}
            row["missing_tasks"] = [t for t in model_tasks if t not in scored]
            row["score_avg"] = (sum(scored.values()) / len(scored)) if not row["missing_tasks"] else None
            medians = [r["score_median"] for r in by_task.values() if not missing(r["score_median"])]
            row["score_median_avg"] = sum(medians) / len(medians) if not row["missing_tasks"] else None
            for col, rule in OVER_TASKS.items():
                row[col] = _over_tasks(group, col, rule)
            row["cells_beside"] = max(_values(group, "cells_beside"), default=None)
            rows.append(row)
    out = pd.DataFrame(rows)
    out["family_order"] = family_order(out["method_family"])
    return out.sort_values(["model", "family_order", "label", "shots"], kind="stable",
                           na_position="first").reset_index(drop=True)


def _cells_beside(frame: pd.DataFrame) -> pd.Series:
    """Each record's `env.cells_beside` (other cells on its device while it ran; null where unknown), as floats."""
    if "record" not in frame:
        return pd.Series(np.nan, index=frame.index)
    return frame["record"].map(lambda r: (r.get("env") or {}).get("cells_beside")).astype(float)


def _over_tasks(group: pd.DataFrame, col: str, rule: str):
    """largest, mean (of the tasks that have the figure), or same (the one value all tasks agree on)."""
    if rule == "same":
        values = sorted(set(group[col].dropna())) if col in group else []
        return values[0] if len(values) == 1 else None
    values = _values(group, col)
    if not values:
        return None
    return max(values) if rule == "largest" else sum(values) / len(values)


def _values(group: pd.DataFrame, col: str) -> list[float]:
    if col not in group:
        return []
    return [float(v) for v in pd.to_numeric(group[col], errors="coerce").dropna()]


def _first(group: pd.DataFrame, col: str):
    if col not in group:
        return None
    values = group[col].dropna()
    return values.iloc[0] if len(values) else None


def _over_seeds(numbers: pd.DataFrame, cell: np.ndarray, cells: int) -> list[pd.DataFrame]:
    """Mean, std, median and IQR of each column's non-null numbers in each cell (rows 0 .. cells - 1; null
    without numbers, std and IQR without two). Computed as pandas does for one Series (numpy's pairwise sum
    over the values in record order, a two-pass variance, linear percentiles), so that each equals
    `Series.mean()`, `.std()`, `.median()`, `.quantile(0.75) - .quantile(0.25)` to the last bit, which
    groupby's own reductions (other summation orders) do not: a value that ends in 5 would round the other way."""
    x = numbers.to_numpy(dtype=float)
    row, col = np.nonzero(~np.isnan(x))  # row-major: record after record
    pair = cell[row] * x.shape[1] + col  # one series per (cell, column)
    order = np.argsort(pair, kind="stable")  # record order within a series
    pair, values = pair[order], x[row, col][order]
    series, start, length = np.unique(pair, return_index=True, return_counts=True)
    stats = np.full((4, cells * x.shape[1]), np.nan)
    for n in np.unique(length):
        at = series[length == n]
        block = values[start[length == n, None] + np.arange(n)]  # a series per row
        stats[0, at] = mean = block.sum(axis=1) / n
        stats[2, at] = np.median(block, axis=1)
        if n > 1:
            stats[1, at] = np.sqrt(((mean[:, None] - block) ** 2).sum(axis=1) / (n - 1))
            low, high = np.percentile(block, [25, 75], axis=1)
            stats[3, at] = high - low
    return [pd.DataFrame(s.reshape(cells, -1), columns=numbers.columns) for s in stats]
