"""Choosing a sweep's setting: on the selection split only, by the median over seeds.

For each (model, task, method label) that sweeps, every setting's score is the median over its ok records of
the main metric on the selection split (`scores.selection`, never `scores.metrics`: the reported split plays no
part). The chosen setting has the best such median (the metric's direction); ties go to the setting listed first
in sorted order, so the choice is the same on every machine. A setting with no ok record cannot be chosen. With
two stages, only first-stage records choose, so the chosen setting's extra seeds never change the choice.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from bench.tasks.metrics import METRICS

SECOND_STAGE = 2  # cell.sweep_stage of the chosen setting's further seeds


@dataclass
class Tried:
    """One setting of a sweep, as the selection split scored it."""

    setting: dict
    selection: float | None  # median over ok first-stage records; None without one
    ok: int
    total: int


@dataclass
class Choice:
    """A (model, task, label)'s sweep: every setting tried, and the one chosen (None: no setting ran ok)."""

    model: str
    task: str
    label: str
    metric: str
    tried: list[Tried] = field(default_factory=list)
    chosen: dict | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.label, self.model, self.task


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def choose(records: list[dict]) -> dict[tuple[str, str, str], Choice]:
    """(label, model, task) -> Choice, over the records of sweeping cells (cell.sweep set)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for record in records:
        cell = record.get("cell") or {}
        if not cell.get("sweep") or cell.get("sweep_stage") == SECOND_STAGE:
            continue
        key = (cell.get("label") or cell.get("method"), cell.get("model"), cell.get("task"))
        groups.setdefault(key, {}).setdefault(setting_key(cell["sweep"]), []).append(record)
    return {key: _choice(key, settings) for key, settings in groups.items()}


def _choice(key: tuple, settings: dict[str, list[dict]]) -> Choice:
    label, model, task = key
    metric = next((r["scores"].get("main_metric") for rs in settings.values() for r in rs
                   if (r.get("scores") or {}).get("main_metric")), None)
    choice = Choice(model, task, label, metric)
    for text in sorted(settings):
        records = settings[text]
        values = [((r.get("scores") or {}).get("selection") or {}).get(metric) for r in records
                  if r.get("status") == "ok"]
        values = [v for v in values if v is not None]
        choice.tried.append(Tried(json.loads(text), statistics.median(values) if values else None,
                                  sum(r.get("status") == "ok" for r in records), len(records)))
    best = best_tried(choice.tried, metric)
    choice.chosen = best.setting if best else None
    return choice


def higher_is_better(metric: str | None) -> bool:
    """The metric's direction (a metric the registry does not know counts as higher-is-better)."""
    return METRICS[metric].higher_is_better if metric in METRICS else True


def best_tried(tried: list[Tried], metric: str | None) -> Tried | None:
    """The setting with the best selection median in the metric's direction (the first of equals, in `tried`'s
    order); None when none has one."""
    scored = [t for t in tried if t.selection is not None]
    if not scored:
        return None
    return (max if higher_is_better(metric) else min)(scored, key=lambda t: t.selection)


def chosen_settings(choices: dict[tuple, Choice]) -> dict[tuple[str, str, str], dict]:
    """What grid.expand takes for a second stage: (label, model, task) -> the chosen setting."""
    return {key: c.chosen for key, c in choices.items() if c.chosen is not None}
