"""The multi-task section: a method trained once on a mixture of tasks beside the same method trained on each task
apart, and methods that compose per-task parts (AdapterFusion), with what each keeps (the survey's practical point:
one adapter for N tasks, or N adapters).

One table per (model, mixture): a row per way of training a method, a column per task of the mixture (its main
metric: the mixture cell's `scores.<task>:<metric>`, or the task's own cell's score; the mean over seeds), their
average, and the storage: the parameters (and bytes) the cells keep to serve every task of the mixture (the sum
over the per-task cells, or the one mixture cell; fusion cells also need the task adapters they read, without the
heads their stages trained: their records' `params.composed` and `composed_bytes`, counted once for the cells that
read the same adapters). Only ok records count; a task without one shows a dash, and the average and storage of that
row are then unknown, as is the storage of fusion cells that read different adapters.
"""

from __future__ import annotations

import pandas as pd

from bench import fmt
from bench.report.table import Cell, Column, Table
from bench.tasks.mixture import TASK_AVERAGE, member_key


def _score(value) -> Cell:
    return Cell(fmt.DASH) if value is None else Cell(f"{value:.1f}", value=value)


def _stored(params: list[dict], key: str) -> float | None:
    """The mean over seeds of one record field (params.stored / params.stored_bytes); None when any is unknown."""
    return fmt.mean_of_all([p.get(key) for p in params]) if params else None


def multitask_tables(frame: pd.DataFrame) -> list[Table]:
    """The section's tables (none when the suite has no multi-task cell)."""
    ok = [r for r in frame["record"] if r["status"] == "ok"]
    mixtures = {}  # (model, mixture) -> [(member, main metric)]
    for r in ok:
        tasks = r["scores"].get("tasks")
        if tasks:
            mixtures.setdefault((r["cell"]["model"], r["cell"]["task"]),
                                [(name, t["main_metric"]) for name, t in tasks.items()])
    return [_table(model, mixture, members, ok) for (model, mixture), members in sorted(mixtures.items())]


def _table(model: str, mixture: str, members: list[tuple[str, str]], ok: list[dict]) -> Table:
    names = [name for name, _ in members]
    table = Table(f"multitask-{model}-{mixture}", f"Multi-task: {mixture} on {model}", [
        Column("Method", numeric=False), Column("Trained", numeric=False),
        *(Column(f"{name} ({metric})", better="higher") for name, metric in members),
        Column("Average", better="higher"), Column("Stored params", better="lower"),
        Column("Stored", better="lower", csv_header="Stored (bytes)"), Column("Parts kept")],
        caption=f"Each method trained on each task apart (a cell per task) and once on the mixture {mixture} "
                f"({', '.join(names)}; a head per task), scored on every task: the mean over seeds of each task's "
                "main metric, their mean, and what the cells keep to serve all of them (parts kept: a state per "
                "cell, plus the task adapters a fusion reads, kept once).")
    labels = sorted({r["cell"]["label"] for r in ok if r["cell"]["model"] == model and r["cell"]["task"] in names}
                    | {r["cell"]["label"] for r in ok if r["cell"]["model"] == model and r["cell"]["task"] == mixture})
    for label in labels:
        mine = [r for r in ok if r["cell"]["model"] == model and r["cell"]["label"] == label]
        per_task = {name: [r for r in mine if r["cell"]["task"] == name] for name in names}
        if any(per_task.values()):
            scores = [fmt.mean_of_all(r["scores"]["metrics"].get(metric) for r in per_task[name])
                      for name, metric in members]
            cells = [r for name in names for r in per_task[name]]
            stored = [_stored([r["params"] for r in per_task[name]], "stored") for name in names]
            stored_bytes = [_stored([r["params"] for r in per_task[name]], "stored_bytes") for name in names]
            shared = sorted({ref for r in cells for ref in r["cell"].get("stage_refs", [])})  # a fusion's adapters
            total = _with_composed(stored, cells, "composed")
            total_bytes = _with_composed(stored_bytes, cells, "composed_bytes")
            kept = len(names) + len(shared)
            trained = f"per task ({len(names)} cells" + (f", over {len(shared)} task adapters)" if shared else ")")
            table.add(label, [Cell(label), Cell(trained), *map(_score, scores), _score(fmt.mean_of_all(scores)),
                              _count(total), _bytes(total_bytes), Cell(str(kept), value=kept)])
        mixed = [r for r in mine if r["cell"]["task"] == mixture]
        if mixed:
            scores = [fmt.mean_of_all([r["scores"]["metrics"].get(member_key(name, metric)) for r in mixed])
                      for name, metric in members]
            table.add(label, [Cell(label), Cell("one mixture"), *map(_score, scores),
                              _score(fmt.mean_of_all([r["scores"]["metrics"].get(TASK_AVERAGE) for r in mixed])),
                              _count(_stored([r["params"] for r in mixed], "stored")),
                              _bytes(_stored([r["params"] for r in mixed], "stored_bytes")), Cell("1", value=1)])
    return table


def _with_composed(stored: list, cells: list[dict], key: str) -> float | None:
    """What the per-task cells keep: their own states, plus once what they read of other cells' (a fusion's task
    adapters, the same for every cell that reads the same stages: else unknown, as they may share some)."""
    if None in stored:
        return None
    if len({tuple(r["cell"].get("stage_refs", [])) for r in cells}) > 1:
        return None
    readers = [r["params"] for r in cells if r["cell"].get("stage_refs")]
    if not readers:
        return sum(stored)
    composed = _stored(readers, key)  # equal in every cell that reads the same stages; None when one is unknown
    return None if composed is None else sum(stored) + composed


def _count(value) -> Cell:
    return Cell(fmt.DASH) if value is None else Cell(fmt.count(value), value=value)


def _bytes(value) -> Cell:
    return Cell(fmt.DASH) if value is None else Cell(fmt.size(value), value=value)
