"""The report's figures drawn from plain data (numbers, strings, lists): one function per kind of plot.

bench/report/plots.py chooses what each figure shows (the rows, titles, captions, what is skipped and
why) and names a function here with its arguments; bench/report/render.py calls it where the figure is
written, in this process or a helper. Besides the arguments, a figure depends only on the drawing code
(this module and the ones it imports: render.DRAWING_CODE), the libraries and matplotlib's settings, which
together key the figure's files: a report redraws a figure only when one of them changes (render.py).

Readable in greyscale (bench/report/style.py): each family has its own marker shape (and hatch in bars),
colour only repeats that; heatmap cells print their values. Point labels never overlap
(bench.report.labels) and legends sit outside the axes, so neither hides a marker. A null is never drawn
as zero.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from bench.report.labels import place_labels
from bench.report.pareto import pareto_front
from bench.report.style import FAMILY_STYLE, OTHER_STYLE, PART_STYLE


def style(family) -> tuple[str, str]:
    return FAMILY_STYLE.get(family, OTHER_STYLE)


def family_legend(ax, families: list[str], extra: list | None = None) -> None:
    """One legend: a marker per family in `families` (already in display order), then `extra` handles."""
    handles = [Line2D([], [], linestyle="", marker=style(f)[0], color=style(f)[1], markeredgecolor="black",
                      markersize=8, label=f) for f in families]
    # outside the axes, so it never hides a marker or a label
    ax.legend(handles=handles + (extra or []), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0, framealpha=0.9)


def scatter_with_front(title: str, x_label: str, log_x: bool, points: list[list[float]], families: list,
                       labels: list[str], legend: list[str]) -> Figure:
    """Average score against a cost, one marker per method (x, y), the Pareto front dashed."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for (px, py), family in zip(points, families):
        marker, colour = style(family)
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
    family_legend(ax, legend, [staircase])
    place_labels(ax, points, labels)
    return fig


def memory_breakdown(title: str, unit: str, row_labels: list[str], parts: list[list], peaks: list[float],
                     peak_label: str, predicted: list[float] | None) -> Figure:
    """Stacked bars per row, `parts` [name, values] in drawing order (NaN: not recorded, drawn as no bar);
    the measured peak as a diamond, the predicted peak (when known) as a bar mark."""
    fig = Figure(figsize=(6.4, 0.5 * len(row_labels) + 1.6))
    ax = fig.subplots()
    ys = np.arange(len(row_labels))
    left = np.zeros(len(row_labels))
    for name, values in parts:
        values = np.asarray(values, dtype=float)
        colour, hatch = PART_STYLE[name]
        ax.barh(ys, np.nan_to_num(values), left=left, color=colour, hatch=hatch, edgecolor="black",
                linewidth=0.5, label=name)
        left += np.nan_to_num(values)
    ax.scatter(np.asarray(peaks, dtype=float), ys, marker="D", color="white", edgecolors="black", s=40, zorder=3,
               label=peak_label)
    if predicted is not None:
        ax.scatter(np.asarray(predicted, dtype=float), ys, marker="|", color="black", s=200, zorder=3,
                   label="predicted peak")
    ax.set_yticks(ys, row_labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"memory ({unit})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def heatmap(title: str, tasks: list[str], row_labels: list[str], grid: list[list[float]],
            text: list[list[str]]) -> Figure:
    """Score minus the reference's, row × task (NaN: no difference known, hatched), `text` printed in each cell."""
    grid = np.asarray(grid, dtype=float).reshape(len(row_labels), len(tasks))
    span = max(1.0, float(np.nanmax(np.abs(grid))))
    fig = Figure(figsize=(1.4 * len(tasks) + 3, 0.45 * len(row_labels) + 1.8))
    ax = fig.subplots()
    cmap = colormaps["RdBu"].with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-span, vmax=span, aspect="auto")
    for i in range(len(row_labels)):
        for j in range(len(tasks)):
            if np.isnan(grid[i, j]):  # hatched, so a missing cell never reads as a zero difference
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#bbbbbb",
                                       linewidth=0))
            dark = not np.isnan(grid[i, j]) and abs(grid[i, j]) > 0.6 * span
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    fig.colorbar(image, ax=ax, label="score − full FT score (points)")
    ax.set_title(title, fontsize=10)
    return fig


def language_heatmap(title: str, test_languages: list[str], train_languages: list[str], grid: list[list[float]],
                     text: list[list[str]], metric: str) -> Figure:
    """A cross-lingual score, train language (rows) × test language (columns), on a sequential scale (NaN: not
    known, hatched), `text` printed in each cell; the in-language cells outlined."""
    grid = np.asarray(grid, dtype=float).reshape(len(train_languages), len(test_languages))
    fig = Figure(figsize=(0.55 * len(test_languages) + 2.6, 0.45 * len(train_languages) + 1.6))
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="#eeeeee")
    low, high = (float(np.nanmin(grid)), float(np.nanmax(grid))) if not np.isnan(grid).all() else (0.0, 100.0)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=max(high, low + 1e-9), aspect="auto")
    for i, train in enumerate(train_languages):
        for j, test in enumerate(test_languages):
            if np.isnan(grid[i, j]):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#bbbbbb",
                                       linewidth=0))
            if train == test:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
            bright = not np.isnan(grid[i, j]) and grid[i, j] > low + 0.6 * (high - low)
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_xticks(range(len(test_languages)), test_languages, fontsize=8)
    ax.set_yticks(range(len(train_languages)), train_languages, fontsize=8)
    ax.set_xlabel("test language", fontsize=8)
    ax.set_ylabel("train language", fontsize=8)
    fig.colorbar(image, ax=ax, label=f"{metric} (points)")
    ax.set_title(title, fontsize=10)
    return fig


def fewshot(title: str, x_label: str, points: list[list[float]], families: list, in_context: list[bool],
            labels: list[str], legend: list[str]) -> Figure:
    """Few-shot score against inference FLOPs (log x): fine-tuned methods filled, in-context learning hollow."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    for (px, py), family, icl in zip(points, families, in_context):
        marker, colour = style(family)
        ax.scatter([px], [py], marker="o" if icl else marker, s=70, zorder=3, linewidths=1.5,
                   color="none" if icl else colour, edgecolors="black")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("score, mean over tasks (0-100)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, linewidth=0.3)
    ax.margins(x=0.12, y=0.1)
    family_legend(ax, legend, [Line2D([], [], linestyle="", marker="o", markerfacecolor="none",
                                      markeredgecolor="black", markersize=8, label="in-context learning (no training)")])
    place_labels(ax, points, labels)
    return fig


def line_plot(title: str, x_label: str, y_label: str, log_x: bool, lines: list[list]) -> Figure:
    """A line per method ([label, xs, ys, starred x or None]): a swept setting's sensitivity (the chosen value
    starred), a training curve. A null point is a gap in its line, never a zero."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    markers = "osD^vP*X"
    for i, (label, xs, ys, chosen) in enumerate(lines):
        # a marker every twentieth of a long line (a curve of 500 points): the line stays readable, the shape named
        line, = ax.plot(xs, ys, marker=markers[i % len(markers)], markevery=max(1, len(xs) // 20), linestyle="-",
                        label=label, zorder=2)
        picked = [(x, y) for x, y in zip(xs, ys) if chosen is not None and x == chosen and not np.isnan(y)]
        if picked:
            ax.scatter(*zip(*picked), marker="*", s=220, color=line.get_color(), edgecolors="black", zorder=3)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(True, linewidth=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return fig
