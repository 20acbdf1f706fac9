"""Markdown tables: pasteable into a README or a pull request."""

from __future__ import annotations

import pandas as pd

from bench.report import fmt

PEAK_NAMES = {"device_peak_allocated_bytes": "CUDA allocated", "cpu_peak_rss_bytes": "CPU RSS"}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def status_text(row) -> str:
    """'failed ×2' etc. for cells that did not end ok; '' when all did."""
    return ", ".join(f"{s} ×{n}" if n > 1 else s for s, n in sorted(row["statuses"].items()))


def task_tables(agg: pd.DataFrame) -> str:
    """One table per task: a row per (method, model), failures shown with their reasons below."""
    parts = []
    for task, group in agg.groupby("task", sort=True):
        metric = group["main_metric"].dropna().iloc[0] if group["main_metric"].notna().any() else "score"
        notes: list[str] = []
        rows = []
        for _, r in group.iterrows():
            score = fmt.score(r["score_mean"], r["score_std"], r["n"])
            status = status_text(r)
            if status:
                notes += [f"{r['label']} on {r['model']}: {reason}" for reason in r["reasons"]]
                score = f"{score} [{status}]" if r["n"] else status
            source = PEAK_NAMES.get(r["memory.peak_source"], "")
            peak = fmt.gib(r["memory.peak_bytes"]) + (f" ({source})" if source else "")
            rows.append([r["label"], r["method_family"] or "–", r["model"], score, fmt.count(r["params.trainable"]),
                         fmt.pct(r["params.trainable_pct"]), peak, fmt.seconds(r["time.train_s"])])
        parts.append(f"### {task}\n\n" + table(
            ["Method", "Family", "Model", f"{metric} (mean ± std)", "Trainable params", "Trainable %",
             "Peak memory (GB)", "Train time (s)"], rows))
        if notes:
            parts.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"
