"""Records -> one row per (model, task, method label), aggregated over seeds.

Only `ok` records enter means and standard deviations. Cells that did not end ok are counted by
status and keep their reasons, so a table can show them instead of silently dropping them.
"""

from __future__ import annotations

import pandas as pd

from bench.methods.base import FAMILIES

KEYS = ["model", "task", "label"]
# Figures averaged over seeds (first = identical across seeds by construction).
MEAN_COLUMNS = ["memory.peak_bytes", "time.train_s", "time.eval_s", "time.train_samples_per_s"]
FIRST_COLUMNS = ["method", "method_family", "main_metric", "params.total", "params.trainable",
                 "params.trainable_pct", "params.stored", "params.stored_bytes", "memory.peak_source"]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame()
    rows = []
    for key, group in frame.groupby(KEYS, sort=False):
        ok = group[group["status"] == "ok"]
        row = dict(zip(KEYS, key))
        source = ok if len(ok) else group
        for col in FIRST_COLUMNS:
            row[col] = _first(source, col)
        row["n"] = len(ok)
        row["n_cells"] = len(group)
        row["seeds"] = sorted(group["seed"].tolist())
        row["score_mean"], row["score_std"] = _mean_std(ok, "score")
        for col in [c for c in frame.columns if c.startswith("scores.")]:
            row[f"{col}.mean"], row[f"{col}.std"] = _mean_std(ok, col)
        for col in MEAN_COLUMNS:
            row[col] = _mean_std(ok, col)[0]
        bad = group[group["status"] != "ok"]
        row["statuses"] = dict(bad["status"].value_counts()) if len(bad) else {}
        row["reasons"] = sorted({r for r in bad["error"].dropna()}) if len(bad) else []
        rows.append(row)
    out = pd.DataFrame(rows)
    out["family_order"] = out["method_family"].map({f: i for i, f in enumerate(FAMILIES)}).fillna(len(FAMILIES))
    return out.sort_values(["model", "task", "family_order", "label"], kind="stable").reset_index(drop=True)


def _first(group: pd.DataFrame, col: str):
    if col not in group:
        return None
    values = group[col].dropna()
    return values.iloc[0] if len(values) else None


def _mean_std(group: pd.DataFrame, col: str) -> tuple[float | None, float | None]:
    if col not in group:
        return None, None
    values = pd.to_numeric(group[col], errors="coerce").dropna()
    if values.empty:
        return None, None
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return float(values.mean()), std
