"""Records -> the numbers every table and plot shows. Each figure is defined once, here.

`aggregate`: one row per (model, task, method label, shots), over seeds. Only `ok` records enter
means and standard deviations (sample std, ddof=1), medians and interquartile ranges (few-shot). Cells that did not end ok are counted by status
and keep their reasons, so a table shows them instead of silently dropping them.

`method_summary`: one row per (model, method label, shots), across the model's tasks:
- `score_avg`: the mean over tasks of the per-task means, only when the method has an ok score on
  every task of that model (else null, with the missing tasks in `missing_tasks`);
- each figure as its registry entry says (`Figure.tasks` in bench/figures.py): params, stored bytes and
  the measured peak the largest over tasks (what the most demanding task needs); time and FLOPs the mean
  over the tasks that have the figure (a cost per training run); the peak's source when all tasks agree.
"""

from __future__ import annotations

import pandas as pd

from bench import methods
from bench.figures import FIGURES
from bench.methods.base import FAMILIES
from bench.report.fmt import missing

KEYS = ["model", "task", "label", "shots"]
# Fixed by the cell's config, so identical across seeds: the first ok value stands for all.
FIRST_COLUMNS = ["method", "method_family", "main_metric", "train.gradient_checkpointing"] + [
    f.key for f in FIGURES.values() if f.seeds == "first"]
# Every other numeric figure of these sections is a mean over the ok seeds.
MEASURED_SECTIONS = ("memory.", "time.", "flops.")
# Cross-task rule per figure in method_summary (see the module docstring).
OVER_TASKS = {f.key: f.tasks for f in FIGURES.values() if f.tasks}


def measured_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric figures of the measured sections (a text figure such as a source name is not one)."""
    return [c for c in frame.columns if c.startswith(MEASURED_SECTIONS) and c not in FIRST_COLUMNS
            and frame[c].dropna().map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all()]


def latest_records(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One record per (model, task, method label, shots, seed): the newest.

    A suite whose settings changed leaves its older records (other cell ids) in the store; they are
    other configurations, not more seeds, so they must not enter the same mean. Returns the kept
    rows and a line per superseded record.
    """
    if frame.empty:
        return frame, []
    order = frame.sort_values("created_at", kind="stable", na_position="first")
    keys = ["model", "task", "label", "shots", "seed"]
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
    rows = []
    for key, group in frame.groupby(KEYS, sort=False, dropna=False):
        ok = group[group["status"] == "ok"]
        row = dict(zip(KEYS, key))
        row["shots"] = None if missing(row["shots"]) else int(row["shots"])
        source = ok if len(ok) else group
        for col in FIRST_COLUMNS:
            row[col] = _first(source, col)
        row["n"] = len(ok)
        row["n_cells"] = len(group)
        row["seeds"] = sorted(group["seed"].tolist())
        row["score_mean"], row["score_std"] = _mean_std(ok, "score")
        row["score_median"], row["score_iqr"] = _median_iqr(ok, "score")
        for col in [c for c in frame.columns if c.startswith("scores.")]:
            row[f"{col}.mean"], row[f"{col}.std"] = _mean_std(ok, col)
        for col in measured:
            row[col] = _mean_std(ok, col)[0]
        bad = group[group["status"] != "ok"]
        row["statuses"] = dict(bad["status"].value_counts()) if len(bad) else {}
        row["reasons"] = sorted({r for r in bad["error"].dropna()}) if len(bad) else []
        rows.append(row)
    out = pd.DataFrame(rows)
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
            rows.append(row)
    out = pd.DataFrame(rows)
    out["family_order"] = family_order(out["method_family"])
    return out.sort_values(["model", "family_order", "label", "shots"], kind="stable",
                           na_position="first").reset_index(drop=True)


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


def _median_iqr(group: pd.DataFrame, col: str) -> tuple[float | None, float | None]:
    """Median and interquartile range (75th - 25th percentile, linear interpolation) over seeds, as
    T-Few reports few-shot results; the IQR needs two or more seeds."""
    if col not in group:
        return None, None
    values = pd.to_numeric(group[col], errors="coerce").dropna()
    if values.empty:
        return None, None
    iqr = float(values.quantile(0.75) - values.quantile(0.25)) if len(values) > 1 else None
    return float(values.median()), iqr


def _mean_std(group: pd.DataFrame, col: str) -> tuple[float | None, float | None]:
    if col not in group:
        return None, None
    values = pd.to_numeric(group[col], errors="coerce").dropna()
    if values.empty:
        return None, None
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return float(values.mean()), std
