"""Sweeps in the report: every other section compares methods at the setting the selection split chose; this one
says which setting that was, what was tried, and how the reported score moves with each swept setting.

`select` keeps, of a sweeping (model, task, method label), only the chosen setting's records (bench/plan/selection.py:
median over seeds on the selection split, never the reported split); a group where no setting ran ok keeps all
its records, so its failures still show. The tables and the sensitivity plots show the reported split's score of
every setting tried, for robustness only: a setting not chosen never enters a ranking.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench import fmt
from bench.fmt import setting_text
from bench.plan.selection import Choice, best_tried, choose, setting_key
from bench.report.plots import Plot, floats, to_draw
from bench.report.table import Cell, Column, Table
from bench.report.tables import slug


def select(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple, Choice]]:
    """(the rows the report ranks: unswept rows and each sweep's chosen setting, every sweeping row, the choices)."""
    if frame.empty or "setting" not in frame or frame["setting"].isna().all():
        return frame, frame.iloc[0:0], {}
    choices = choose(list(frame["record"]))
    swept = frame["setting"].notna()

    def kept(row) -> bool:
        choice = choices.get((row["label"], row["model"], row["task"]))
        if choice is None or choice.chosen is None:
            return True
        return setting_key(row["record"]["cell"]["sweep"]) == setting_key(choice.chosen)

    keep = ~swept | frame.apply(kept, axis=1)
    return frame[keep], frame[swept], choices


def _reported(rows: pd.DataFrame) -> tuple[float | None, float | None, int]:
    """Mean, sample std and count of the ok rows' reported main score."""
    scores = pd.to_numeric(rows.loc[rows["status"] == "ok", "score"], errors="coerce").dropna()
    if scores.empty:
        return None, None, 0
    return float(scores.mean()), float(scores.std()) if len(scores) > 1 else None, len(scores)


def _of_setting(swept: pd.DataFrame, choice: Choice, setting: dict) -> pd.DataFrame:
    rows = swept[(swept["label"] == choice.label) & (swept["model"] == choice.model) & (swept["task"] == choice.task)]
    return rows[rows["record"].map(lambda r: setting_key(r["cell"]["sweep"]) == setting_key(setting))]


def selection_tables(swept: pd.DataFrame, choices: dict[tuple, Choice]) -> list[Table]:
    """Per model: the chosen setting of every sweep; then every setting tried, with both splits' scores."""
    tables = []
    for model in sorted({c.model for c in choices.values()}):
        ours = sorted((c for c in choices.values() if c.model == model), key=lambda c: (c.task, c.label))
        chosen = Table(f"selected-{slug(model)}", f"{model}: settings chosen on the selection split", [
            Column("Task", numeric=False), Column("Method", numeric=False), Column("Chosen setting", numeric=False),
            Column("Selection", extra=("n",)), Column("Reported", extra=("std", "n")), Column("Tried", numeric=False)],
            caption="Each method's setting is the one with the best median over seeds on the selection split "
                    "(held out of training, never reported); Reported: the chosen setting's score on the "
                    "evaluation split, mean ± std over its ok seeds, as the other tables show it. Tried: settings "
                    "with an ok record / settings run.")
        tried = Table(f"sensitivity-{slug(model)}", f"{model}: every setting tried", [
            Column("Task", numeric=False), Column("Method", numeric=False), Column("Setting", numeric=False),
            Column("Selection", extra=("n",)), Column("Reported", extra=("std", "n")), Column("Chosen", numeric=False)],
            caption="Sensitivity: every swept setting's median on the selection split and its reported score. "
                    "Settings not chosen are shown for robustness only; no table ranks them.")
        for c in ours:
            best = next((t for t in c.tried if t.setting == c.chosen), None)
            mean, std, n = _reported(_of_setting(swept, c, c.chosen)) if c.chosen is not None else (None, None, 0)
            chosen.add(c.task, [Cell(c.task), Cell(c.label),
                                Cell(setting_text(c.chosen) if c.chosen is not None else "none ran ok"),
                                _score(best.selection if best else None, n=best.ok if best else 0),
                                _score(mean, std, n), Cell(f"{sum(t.ok > 0 for t in c.tried)} / {len(c.tried)}")])
            for t in c.tried:
                mean, std, n = _reported(_of_setting(swept, c, t.setting))
                tried.add(c.task, [Cell(c.task), Cell(c.label), Cell(setting_text(t.setting)),
                                   _score(t.selection, n=t.ok), _score(mean, std, n),
                                   Cell("yes" if t.setting == c.chosen else "")])
        tables += [chosen, tried]
    return tables


def _score(value: float | None, std: float | None = None, n: int = 0) -> Cell:
    if value is None:
        return Cell(fmt.DASH, extra={"std": None, "n": n})
    return Cell(fmt.score(value, std, n), value=value, extra={"std": std, "n": n})


def sensitivity_plots(swept: pd.DataFrame, choices: dict[tuple, Choice], folder: Path) -> list[Plot]:
    """One plot per (model, task, swept setting with two or more numeric values): the reported score against the
    setting, one line per method. With several settings swept, each value's point is the setting with that value
    that scored best on the selection split (a profile), so the line shows what choosing there would report."""
    plots = []
    by_plot: dict[tuple, list] = {}
    for c in choices.values():
        keys = {k for t in c.tried for k in t.setting}
        for key in sorted(keys):
            values = sorted({t.setting.get(key) for t in c.tried if isinstance(t.setting.get(key), (int, float))})
            if len(values) >= 2:
                by_plot.setdefault((c.model, c.task, key), []).append((c, values))
    for (model, task, key), lines in sorted(by_plot.items()):
        drawn = []
        for c, values in lines:
            points = [(v, _profile(swept, c, key, v)) for v in values]
            chosen = c.chosen.get(key) if c.chosen else None
            drawn.append([c.label, floats(v for v, _ in points),
                          floats(math.nan if y is None else y for _, y in points), chosen])
        every = [v for _, values in lines for v in values]
        log_x = min(every) > 0 and max(every) / min(every) >= 10
        title = f"{model} · {task}: reported score against {key}"
        plot = Plot("sensitivity", title, caption=f"Each line: a method; a star marks the {key} chosen on the "
                    "selection split. Points: the evaluation split's mean over seeds.")
        plots.append(to_draw(plot, folder, f"sensitivity-{slug(model)}-{slug(task)}-{slug(key)}", "line_plot",
                             title, f"{key}{' (log scale)' if log_x else ''}",
                             "reported score, mean over seeds (0-100)", log_x, drawn))
    return plots


def _profile(swept: pd.DataFrame, c: Choice, key: str, value) -> float | None:
    """The reported mean of the setting with `key` = `value` that scored best on the selection split."""
    best = best_tried([t for t in c.tried if t.setting.get(key) == value], c.metric)
    return _reported(_of_setting(swept, c, best.setting))[0] if best else None
