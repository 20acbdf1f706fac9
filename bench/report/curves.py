"""How training went: each method's loss curve and evaluation curve per (model, task), and how fast it learns.

From the curves cells write as they train (bench/cell/curves.py) and the evaluations their records hold:

- loss curve: the training loss against the step, one line per method label, the mean over its ok seeds at each
  step all of them reached (cells of one label share their steps, so their points fall on the same steps);
- evaluation curve: the main metric at each evaluation during training (`eval_every`), the same way;
- "steps to 90 % of the loss drop": the first curve point whose loss is at most final + 0.1 × (first − final),
  first and final the curve's first and last points (none when the loss did not fall; the median over ok seeds);
- "steps to 90 % of the final score" (cells with `eval_every`): the first evaluation scoring at least 90 % of the
  last evaluation's score (at most last / 0.9 for a metric where lower is better); median over ok seeds.
Only ok records enter; a cell without a curve file (run before curves existed) is left out and counted.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from bench.fmt import DASH
from bench.plan.selection import higher_is_better
from bench.report.plots import Plot, floats, to_draw
from bench.report.table import Cell, Column, Table
from bench.report.tables import slug

FRACTION = 0.9


def loss_drop_step(points: list[dict]) -> int | None:
    losses = [(p["step"], p["loss"]) for p in points if p.get("loss") is not None]
    if len(losses) < 2:
        return None
    first, final = losses[0][1], losses[-1][1]
    if final >= first:  # no drop to measure a share of
        return None
    target = final + (1 - FRACTION) * (first - final)
    return next(step for step, loss in losses if loss <= target)


def score_step(evals: list[dict], higher: bool) -> int | None:
    scores = [(e["step"], e["eval"]) for e in evals if e.get("eval") is not None]
    if not scores:
        return None
    last = scores[-1][1]
    reached = (lambda s: s >= FRACTION * last) if higher else (lambda s: s <= last / FRACTION)
    return next(step for step, s in scores if reached(s))


def _mean_line(curves: list[list[dict]], key: str) -> tuple[list[float], list[float]]:
    """The mean over cells of `key` at each step every cell has."""
    by_step = [{p["step"]: p[key] for p in c if p.get(key) is not None} for c in curves]
    common = sorted(set.intersection(*(set(d) for d in by_step))) if by_step else []
    return [float(s) for s in common], [statistics.fmean(d[s] for d in by_step) for s in common]


def _groups(frame: pd.DataFrame, curves: dict[str, dict]):
    ok = frame[(frame["status"] == "ok") & frame["id"].isin(list(curves))]
    return ok.groupby(["model", "task", "label"], sort=True)


def curve_tables(frame: pd.DataFrame, curves: dict[str, dict]) -> list[Table]:
    if frame.empty or not curves:
        return []
    tables: dict[str, Table] = {}
    for (model, task, label), rows in _groups(frame, curves):
        table = tables.get(model) or tables.setdefault(model, _curve_table(model))
        cells = [curves[i] for i in rows["id"]]
        higher = higher_is_better(rows["main_metric"].iloc[0])
        drops = [s for s in (loss_drop_step(c["train"]) for c in cells) if s is not None]
        reached = [s for s in (score_step(c["evals"], higher) for c in cells) if s is not None]
        table.add(task, [Cell(task), Cell(label), _median(c["steps"] for c in cells), _median(drops),
                         _median(reached), Cell(str(len(cells)), value=len(cells))])
    for table in tables.values():
        table.mark_best()
    return list(tables.values())


def _curve_table(model: str) -> Table:
    return Table(f"curves-{slug(model)}", f"{model}: how fast each method learns", [
        Column("Task", numeric=False), Column("Method", numeric=False), Column("Steps"),
        Column("Steps to 90 % of the loss drop", better="lower"),
        Column("Steps to 90 % of the final score", better="lower"), Column("Seeds")],
        caption="Medians over the ok seeds with a curve. Loss drop: first curve point with loss ≤ final + 0.1 × "
                "(first − final). Final score: the last evaluation during training (eval_every), on the split "
                f"those evaluations used; {DASH} without evaluations during training.")


def _median(values) -> Cell:
    values = [v for v in values if v is not None]
    if not values:
        return Cell(DASH)
    value = statistics.median(values)
    return Cell(f"{value:,.0f}", value=value)


def curve_plots(frame: pd.DataFrame, curves: dict[str, dict], folder: Path) -> list[Plot]:
    """Per (model, task): the loss curves, and the evaluation curves where cells evaluated during training."""
    if frame.empty or not curves:
        return []
    by_plot: dict[tuple, list] = {}
    for (model, task, label), rows in _groups(frame, curves):
        by_plot.setdefault((model, task), []).append((label, [curves[i] for i in rows["id"]]))
    plots = []
    for (model, task), methods in sorted(by_plot.items()):
        for kind, key, part, y_label in (("loss", "loss", "train", "training loss, mean over seeds"),
                                         ("eval", "eval", "evals", "main metric during training, mean over seeds")):
            drawn = []
            for label, cells in methods:
                xs, ys = _mean_line([c[part] for c in cells], key)
                if xs:
                    drawn.append([label, floats(xs), floats(ys), None])
            if not drawn:
                continue
            title = f"{model} · {task}: {'training loss' if kind == 'loss' else 'evaluations'} by step"
            plot = Plot(f"{kind}-curve", title, caption="Each line: a method, the mean over its ok seeds at the "
                        "steps they share (bench/report/curves.py).")
            plots.append(to_draw(plot, folder, f"{kind}-curve-{slug(model)}-{slug(task)}", "line_plot", title,
                                 "step", y_label, False, drawn))
    return plots
