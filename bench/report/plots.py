"""The report's plots, chosen from the same rows as the tables: for each figure its title, its caption,
what it leaves out and why, and the plain data bench/report/draw.py draws it from; bench/report/render.py
then writes the figures to files (PNG + SVG), several at once, each only when its data changed.

A plot whose figures no record has is skipped with the reason (the report says so); a null is never
drawn as zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import fmt
from bench.env import usable_cores
from bench.fmt import missing
from bench.methods.base import FAMILIES
from bench.report.render import Job, write_all
from bench.report.style import PART_STYLE
from bench.report.tables import display_label, family_name, flops_column, memory_parts, memory_rows, memory_unit, slug


@dataclass
class Plot:
    kind: str
    title: str
    caption: str = ""
    png: Path | None = None
    svg: Path | None = None
    skipped: str | None = None  # why it was not drawn
    job: Job | None = field(default=None, repr=False)  # what draws its files (png, svg): None when skipped


def legend_order(families: list[str]) -> list[str]:
    """The families present, in FAMILIES order, then any other (sorted): a legend's entries."""
    present = set(families)
    return [f for f in FAMILIES if f in present] + sorted(present - set(FAMILIES))


def to_draw(plot: Plot, folder: Path, name: str, function: str, *args) -> Plot:
    """Name the plot's files and keep what draws it; draw_all writes them all at once."""
    plot.png, plot.svg = folder / f"{name}.png", folder / f"{name}.svg"
    plot.job = Job(function, list(args), plot.png, plot.svg)
    return plot


def floats(values) -> list[float]:
    """Numbers as plain floats (NaN where unknown): what the draw functions take and the cache keys on."""
    return [float(v) for v in values]


def not_shown(rows: pd.DataFrame, why: str) -> str:
    return f" Not shown ({why}): {', '.join(display_label(r) for _, r in rows.iterrows())}." if len(rows) else ""


def scatter_with_front(summary: pd.DataFrame, folder: Path, kind: str, x_col: str, x_label: str,
                       log_x: bool, scale: float = 1.0) -> list[Plot]:
    """Average score against a cost, one marker per method, the Pareto front dashed; one plot per model."""
    what = x_label.split(" (")[0]
    if summary.empty:
        return [Plot(kind, f"Average score vs {what}", skipped="no full-data (not few-shot) records")]
    plots = []
    for model, rows in summary.groupby("model", sort=True):
        title = f"{model}: average score vs {what}"
        x = pd.to_numeric(rows[x_col], errors="coerce") / scale
        usable = rows["score_avg"].notna() & x.notna() & ((x > 0) if log_x else True)
        if not usable.any():
            plots.append(Plot(kind, title, skipped=f"no method has both an average score and {x_col}"))
            continue
        shown = rows[usable]
        points = [list(p) for p in zip(floats(x[usable]), floats(shown["score_avg"]))]
        caption = ("Each marker is a method (mean over tasks of its per-task mean score); the dashed "
                   "staircase joins the methods no other beats on both cost and score.")
        caption += not_shown(rows[~rows["score_avg"].notna()], "no ok score on every task")
        caption += not_shown(rows[rows["score_avg"].notna() & ~usable], f"no {x_col}" + (" > 0 (log axis)" if log_x else ""))
        families = [family_name(r) for _, r in shown.iterrows()]
        plots.append(to_draw(Plot(kind, title, caption), folder, f"{kind}-{slug(model)}", "scatter_with_front",
                             title, x_label, log_x, points, families, [display_label(r) for _, r in shown.iterrows()],
                             legend_order(families)))
    return plots


def memory_breakdown(agg: pd.DataFrame, folder: Path) -> list[Plot]:
    """Stacked bars per method (weights, gradients, optimizer, activations), measured peak as a marker."""
    title = "Memory breakdown"
    rows_all = memory_rows(agg)
    parts = [(c, n) for c, n in memory_parts() if n in PART_STYLE and c in rows_all and rows_all[c].notna().any()]
    if not parts:
        return [Plot("memory", title, skipped="no record has the memory breakdown (weights, gradients, "
                                              "optimizer, activations bytes)")]
    plots = []
    for model, rows in rows_all.groupby("model", sort=True):
        unit, scale = memory_unit(rows, parts)
        bars = [[name, floats(pd.to_numeric(rows[col], errors="coerce").to_numpy() / scale)] for col, name in parts]
        peaks = floats(pd.to_numeric(rows["memory.peak_bytes"], errors="coerce").to_numpy() / scale)
        predicted = None
        if "memory.predicted_peak_bytes" in rows and rows["memory.predicted_peak_bytes"].notna().any():
            predicted = floats(pd.to_numeric(rows["memory.predicted_peak_bytes"], errors="coerce").to_numpy() / scale)
        missing_parts = [r for _, r in rows.iterrows() if any(missing(r[c]) for c, _ in parts)]
        caption = ("Bars: weights, gradients, optimizer state and saved activations, per method on its task with "
                   "the largest measured peak (stacked as if all were held at once); diamond: the measured peak; "
                   "bar mark: the predicted peak, the busier of what the probe step and the evaluation's longest "
                   "batch held at once (memory.predicted_peak_bytes).")
        caption += not_shown(pd.DataFrame(missing_parts), "some parts not recorded, drawn as missing, not zero") \
            if missing_parts else ""
        plot_title = f"{model}: {title.lower()}"
        plots.append(to_draw(Plot("memory", plot_title, caption), folder, f"memory-{slug(model)}",
                             "memory_breakdown", plot_title, unit,
                             [f"{display_label(r)} · {r['task']}" for _, r in rows.iterrows()], bars, peaks,
                             f"measured peak ({peak_names(rows)})", predicted))
    return plots


def heatmap(summary: pd.DataFrame, agg: pd.DataFrame, folder: Path) -> list[Plot]:
    """Per model: score minus full fine-tuning's score, method × task, the value printed in each cell."""
    plots = []
    for model, rows in summary[summary["shots"].isna()].groupby("model", sort=True):
        title = f"{model}: score relative to full fine-tuning"
        full = rows[rows["reference"]]
        others = rows[~rows["reference"]]
        if full.empty or others.empty:
            plots.append(Plot("heatmap", title, skipped="needs a full fine-tuning row and another method"))
            continue
        tasks = sorted(agg[agg["model"] == model]["task"].unique())
        ref = full.iloc[0]["tasks"]
        grid = np.full((len(others), len(tasks)), np.nan)
        text = [["" for _ in tasks] for _ in range(len(others))]
        for i, (_, r) in enumerate(others.iterrows()):
            for j, task in enumerate(tasks):
                cell, base = r["tasks"].get(task), ref.get(task)
                if cell is None or base is None or missing(base["score_mean"]):
                    text[i][j] = fmt.DASH
                elif missing(cell["score_mean"]):
                    text[i][j] = ", ".join(sorted(cell["statuses"])) or fmt.DASH
                else:
                    grid[i, j] = cell["score_mean"] - base["score_mean"]
                    text[i][j] = fmt.signed(grid[i, j])
        if np.isnan(grid).all():
            plots.append(Plot("heatmap", title, skipped="no method has a score where full fine-tuning has one"))
            continue
        caption = "Each cell: the method's mean score minus full fine-tuning's on that task, in points."
        plots.append(to_draw(Plot("heatmap", title, caption), folder, f"heatmap-{slug(model)}", "heatmap",
                             title, [str(t) for t in tasks], [display_label(r) for _, r in others.iterrows()],
                             [floats(row) for row in grid], text))
    return plots


def fewshot(summary: pd.DataFrame, folder: Path) -> list[Plot]:
    """Few-shot accuracy against inference FLOPs per example (log x): PEFT methods filled, ICL hollow."""
    title = "Few-shot: score vs inference FLOPs"
    rows = summary[summary["shots"].notna()]
    if rows.empty:
        return [Plot("few-shot", title, skipped="no few-shot records (config.train.shots)")]
    col, how = flops_column(rows, "flops.inference_per_example", "flops.cost_model_inference_per_example")
    x = pd.to_numeric(rows[col], errors="coerce") if col in rows else pd.Series(np.nan, index=rows.index)
    usable = rows["score_avg"].notna() & (x > 0)
    if not usable.any():
        return [Plot("few-shot", title, skipped="no few-shot method has both a score on every task and "
                                                "inference FLOPs")]
    shown = rows[usable]
    in_context = [bool(v) for v in shown["in_context"]]
    families = [family_name(r) for _, r in shown.iterrows()]
    caption = "Filled markers: fine-tuned few-shot methods; hollow circles: in-context learning."
    caption += not_shown(rows[~usable], "no score on every task or no inference FLOPs")
    return [to_draw(Plot("few-shot", title, caption), folder, "few-shot", "fewshot", title,
                    f"inference FLOPs per example ({how}, log scale)",
                    [list(p) for p in zip(floats(x[usable]), floats(shown["score_avg"]))],
                    families, in_context, [f"{display_label(r)}, {r['model']}" for _, r in shown.iterrows()],
                    legend_order([f for f, icl in zip(families, in_context) if not icl]))]


def peak_names(rows: pd.DataFrame) -> str:
    return ", ".join(sorted({fmt.peak_name(s) for s in rows["memory.peak_source"].dropna()})) or "source unknown"


def draw_all(agg: pd.DataFrame, summary: pd.DataFrame, folder: Path, more: list[Plot] = ()) -> list[Plot]:
    """Every plot of the report (`more`: those another section chose, e.g. bench/report/sweeps.py); its files
    written by as many processes as this one may use cores, except where the files of the same figure (same data,
    same drawing code) are already there."""
    full_data = summary[summary["shots"].isna()]
    plots = scatter_with_front(full_data, folder, "params", "params.trainable",
                               "trainable parameters (count, log scale)", log_x=True)
    plots += scatter_with_front(full_data, folder, "peak-memory", "memory.peak_bytes",
                                f"peak memory (GB, {peak_names(full_data)})", log_x=False, scale=2**30)
    plots += memory_breakdown(agg, folder)
    plots += heatmap(summary, agg, folder)
    plots += fewshot(summary, folder)
    plots += list(more)
    jobs = [p.job for p in plots if p.job is not None]
    if jobs:
        folder.mkdir(parents=True, exist_ok=True)
        write_all(jobs, usable_cores(), folder)
    return plots
