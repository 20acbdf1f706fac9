"""The report's plots (matplotlib, PNG + SVG), drawn from the same rows as the tables; built here, written
to files by bench/report/render.py (several at once).

Readable in greyscale: each family has its own marker shape (and hatch in bars), colour only repeats
that; heatmap cells print their values. Point labels never overlap (bench.report.labels) and legends
sit outside the axes, so neither hides a marker. A plot whose figures no record has is skipped with the
reason (the report says so); a null is never drawn as zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from bench.env import usable_cores
from bench.methods.base import FAMILIES
from bench.report import fmt
from bench.report.fmt import missing
from bench.report.labels import place_labels
from bench.report.pareto import pareto_front
from bench.report.render import write_all
from bench.report.tables import MEMORY_PARTS, display_label, flops_column, memory_rows, memory_unit, slug

# Okabe-Ito colours (colour-blind safe) with distinct shapes, so families stay apart in greyscale.
FAMILY_STYLE = {"baseline": ("s", "#000000"), "additive": ("^", "#E69F00"), "partial": ("D", "#56B4E9"),
                "reparameterized": ("o", "#009E73"), "hybrid": ("P", "#CC79A7"), "unified": ("*", "#D55E00")}
OTHER_STYLE = ("X", "#999999")
PART_STYLE = {"Weights": ("#404040", ""), "Gradients": ("#808080", "//"), "Optimizer": ("#b0b0b0", "xx"),
              "Activations": ("#e0e0e0", "..")}


@dataclass
class Plot:
    kind: str
    title: str
    caption: str = ""
    png: Path | None = None
    svg: Path | None = None
    skipped: str | None = None  # why it was not drawn
    figure: Figure | None = field(default=None, repr=False)  # built, until draw_all has written its files


def style(family) -> tuple[str, str]:
    return FAMILY_STYLE.get(family, OTHER_STYLE)


def family_legend(ax, families, extra: list | None = None) -> None:
    """One legend: a marker per family present (in FAMILIES order), then `extra` handles."""
    present = [f for f in FAMILIES if f in set(families)] + sorted({f for f in families if f not in FAMILIES} - {None})
    handles = [Line2D([], [], linestyle="", marker=style(f)[0], color=style(f)[1], markeredgecolor="black",
                      markersize=8, label=f) for f in present]
    # outside the axes, so it never hides a marker or a label
    ax.legend(handles=handles + (extra or []), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0, framealpha=0.9)


def save(fig: Figure, folder: Path, name: str, plot: Plot) -> Plot:
    """Name the plot's files and keep its figure; draw_all writes them all at once."""
    plot.png, plot.svg, plot.figure = folder / f"{name}.png", folder / f"{name}.svg", fig
    return plot


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
        points = list(zip(x[usable], shown["score_avg"]))
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.subplots()
        for (px, py), (_, r) in zip(points, shown.iterrows()):
            marker, colour = style(r["method_family"])
            ax.scatter([px], [py], marker=marker, color=colour, edgecolors="black", s=60, zorder=3)
        front = pareto_front(points)
        (staircase,) = ax.step([points[i][0] for i in front], [points[i][1] for i in front], where="post",
                               linestyle="--", color="black", linewidth=1, zorder=2, label="Pareto front")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("average score over tasks (0-100)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", linewidth=0.3)
        ax.margins(x=0.12, y=0.1)
        family_legend(ax, shown["method_family"], [staircase])
        place_labels(ax, points, [display_label(r) for _, r in shown.iterrows()])
        caption = ("Each marker is a method (mean over tasks of its per-task mean score); the dashed "
                   "staircase joins the methods no other beats on both cost and score.")
        caption += not_shown(rows[~rows["score_avg"].notna()], "no ok score on every task")
        caption += not_shown(rows[rows["score_avg"].notna() & ~usable], f"no {x_col}" + (" > 0 (log axis)" if log_x else ""))
        plots.append(save(fig, folder, f"{kind}-{slug(model)}", Plot(kind, title, caption)))
    return plots


def memory_breakdown(agg: pd.DataFrame, folder: Path) -> list[Plot]:
    """Stacked bars per method (weights, gradients, optimizer, activations), measured peak as a marker."""
    title = "Memory breakdown"
    rows_all = memory_rows(agg)
    parts = [(c, n) for c, n in MEMORY_PARTS if n in PART_STYLE and c in rows_all and rows_all[c].notna().any()]
    if not parts:
        return [Plot("memory", title, skipped="no record has the memory breakdown (weights, gradients, "
                                              "optimizer, activations bytes)")]
    plots = []
    for model, rows in rows_all.groupby("model", sort=True):
        unit, scale = memory_unit(rows, parts)
        fig = Figure(figsize=(6.4, 0.5 * len(rows) + 1.6))
        ax = fig.subplots()
        ys = np.arange(len(rows))
        left = np.zeros(len(rows))
        for col, name in parts:
            values = pd.to_numeric(rows[col], errors="coerce").to_numpy() / scale
            colour, hatch = PART_STYLE[name]
            ax.barh(ys, np.nan_to_num(values), left=left, color=colour, hatch=hatch, edgecolor="black",
                    linewidth=0.5, label=name)
            left += np.nan_to_num(values)
        peaks = pd.to_numeric(rows["memory.peak_bytes"], errors="coerce").to_numpy() / scale
        ax.scatter(peaks, ys, marker="D", color="white", edgecolors="black", s=40, zorder=3,
                   label=f"measured peak ({peak_names(rows)})")
        if "memory.predicted_peak_bytes" in rows and rows["memory.predicted_peak_bytes"].notna().any():
            predicted = pd.to_numeric(rows["memory.predicted_peak_bytes"], errors="coerce").to_numpy() / scale
            ax.scatter(predicted, ys, marker="|", color="black", s=200, zorder=3, label="predicted peak")
        ax.set_yticks(ys, [f"{display_label(r)} · {r['task']}" for _, r in rows.iterrows()], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"memory ({unit})")
        ax.set_title(f"{model}: {title.lower()}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        missing_parts = [r for _, r in rows.iterrows() if any(missing(r[c]) for c, _ in parts)]
        caption = ("Bars: the predicted parts of training memory, per method on its task with the largest "
                   "measured peak; diamond: the measured peak; bar mark: the predicted peak.")
        caption += not_shown(pd.DataFrame(missing_parts), "some parts not recorded, drawn as missing, not zero") \
            if missing_parts else ""
        plots.append(save(fig, folder, f"memory-{slug(model)}", Plot("memory", f"{model}: {title.lower()}", caption)))
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
        span = max(1.0, float(np.nanmax(np.abs(grid))))
        fig = Figure(figsize=(1.4 * len(tasks) + 3, 0.45 * len(others) + 1.8))
        ax = fig.subplots()
        cmap = colormaps["RdBu"].with_extremes(bad="#eeeeee")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-span, vmax=span, aspect="auto")
        for i in range(len(others)):
            for j in range(len(tasks)):
                if np.isnan(grid[i, j]):  # hatched, so a missing cell never reads as a zero difference
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#bbbbbb",
                                           linewidth=0))
                dark = not np.isnan(grid[i, j]) and abs(grid[i, j]) > 0.6 * span
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_yticks(range(len(others)), [display_label(r) for _, r in others.iterrows()], fontsize=8)
        fig.colorbar(image, ax=ax, label="score − full FT score (points)")
        ax.set_title(title, fontsize=10)
        caption = "Each cell: the method's mean score minus full fine-tuning's on that task, in points."
        plots.append(save(fig, folder, f"heatmap-{slug(model)}", Plot("heatmap", title, caption)))
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
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for (_, r), px in zip(rows[usable].iterrows(), x[usable]):
        marker, colour = style(r["method_family"])
        icl = r["in_context"]
        ax.scatter([px], [r["score_avg"]], marker="o" if icl else marker, s=70, zorder=3, linewidths=1.5,
                   color="none" if icl else colour, edgecolors="black")
    ax.set_xscale("log")
    ax.set_xlabel(f"inference FLOPs per example ({how}, log scale)")
    ax.set_ylabel("score, mean over tasks (0-100)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, linewidth=0.3)
    ax.margins(x=0.12, y=0.1)
    family_legend(ax, rows[usable & ~rows["in_context"].astype(bool)]["method_family"],
                  [Line2D([], [], linestyle="", marker="o", markerfacecolor="none", markeredgecolor="black",
                          markersize=8, label="in-context learning (no training)")])
    place_labels(ax, list(zip(x[usable], rows[usable]["score_avg"])),
                 [f"{display_label(r)}, {r['model']}" for _, r in rows[usable].iterrows()])
    caption = "Filled markers: fine-tuned few-shot methods; hollow circles: in-context learning."
    caption += not_shown(rows[~usable], "no score on every task or no inference FLOPs")
    return [save(fig, folder, "few-shot", Plot("few-shot", title, caption))]


def peak_names(rows: pd.DataFrame) -> str:
    return ", ".join(sorted({fmt.peak_name(s) for s in rows["memory.peak_source"].dropna()})) or "source unknown"


def draw_all(agg: pd.DataFrame, summary: pd.DataFrame, folder: Path) -> list[Plot]:
    """Every plot of the report, its files written by as many processes as this one may use cores."""
    full_data = summary[summary["shots"].isna()]
    plots = scatter_with_front(full_data, folder, "params", "params.trainable",
                               "trainable parameters (count, log scale)", log_x=True)
    plots += scatter_with_front(full_data, folder, "peak-memory", "memory.peak_bytes",
                                f"peak memory (GB, {peak_names(full_data)})", log_x=False, scale=2**30)
    plots += memory_breakdown(agg, folder)
    plots += heatmap(summary, agg, folder)
    plots += fewshot(summary, folder)
    built = [p for p in plots if p.figure is not None]
    if built:
        folder.mkdir(parents=True, exist_ok=True)
        write_all([(p.figure, p.png, p.svg) for p in built], usable_cores())
    for plot in built:
        plot.figure = None
    return plots
