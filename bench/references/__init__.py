"""Published results: what a paper reports for a (model, method, task, metric), beside the cells that measure it.

Each YAML file of this folder transcribes one paper's tables row by row, as the paper prints them: a row names
its model and method (registry names), its values in the order of the table's tasks, the spread the paper prints
beside them (±), the row's average (the paper's Avg column, which tests/test_references.py checks against the
values: a second reading of every one), the trainable parameters the paper states and the setting it was run
under. A table also says what its statistic is (median of 5 seeds, ...) and how the paper's measurement differs
from a cell's, so a comparison names every difference instead of hiding it.

A file says where its numbers were read (`source`: a url, or repo@commit and the path of each row's file). A
table says how the paper aggregates runs (`aggregate`: median, mean, or single, one run, over `seeds` runs), so a
report computes ours the same way; which of its names the harness does not ship (`not_in_harness`: checked
against the registries, so a name the harness comes to ship must leave the list; a cell of a user's own task or
model of that name still matches, its differences named); and what each cost figure its rows carry means
(`costs`: name -> definition, e.g. a run's peak accelerator memory in bytes). A row's `params` is the paper's
rounded count ("0.3M") or an exact count (9175040).

A table whose rows are each one model trained on a mixture of the table's tasks and scored on each of them (a
multi-task paper's rows, HyperFormer++'s) says `multitask: true`: its values compare with a suite's mixture cells'
per-task scores (`scores.<task>:<metric>`), never with a cell trained on one task, and a single-task table's never
with a mixture cell (a paper that prints both kinds in one table is transcribed as two tables of that name).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bench.config import check_keys, coerce
from bench.errors import BadInput
from bench.yamlfile import load_yaml

_FILE_KEYS = {"paper": str, "arxiv": str, "source": str, "tables": list}
_TABLE_KEYS = {"table": str, "split": str, "statistic": str, "aggregate": str, "seeds": int, "tasks": list,
               "differences": list, "task_notes": dict, "not_in_harness": list, "costs": dict, "rows": list,
               "multitask": bool}
_ROW_KEYS = {"row": str, "model": str, "method": str, "params": str, "values": list, "spreads": list, "avg": float,
             "setting": str, "costs": dict}
# How a paper aggregates its runs; "single": one run, whose value a mean over our seeds is compared with.
AGGREGATES = ("median", "mean", "single")
_PARAMS = re.compile(r"(\d+(?:\.\d+)?)([KMB])?")
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9}


@dataclass(frozen=True)
class Reference:
    paper: str
    arxiv: str
    table: str
    row: str  # the row's label in the paper
    model: str
    method: str
    task: str
    metric: str
    value: float  # 0-100, as the paper prints it
    spread: float | None  # the ± the paper prints beside the value; None where it prints none
    statistic: str  # the paper's words for it
    aggregate: str  # one of AGGREGATES
    seeds: int | None  # how many runs the aggregate is over (None: not stated)
    split: str
    params: str | None  # the trainable parameters the paper states ("0.3M", or an exact count "9175040")
    setting: str | None
    differences: tuple[str, ...]
    costs: tuple[tuple[str, float, str], ...] = ()  # (name, value, definition) of each cost figure the row gives
    read_from: str = ""  # where the number was read: a url or repo@commit[:path]
    not_in_harness: tuple[str, ...] = ()  # the table's names (model, method, task) the harness does not ship
    multitask: bool = False  # one model trained on the table's tasks together, scored on each

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}, row \"{self.row}\""

    def params_match(self, method_params) -> bool | None:
        """Whether a count of method parameters rounds to the one the paper states (None: either is unknown)."""
        stated = _PARAMS.fullmatch(str(self.params or ""))
        if stated is None or not isinstance(method_params, (int, float)):
            return None
        if stated.group(2) is None:  # an exact count
            return int(method_params) == int(stated.group(1))
        digits = len(stated.group(1).partition(".")[2])
        return round(method_params / _SCALE[stated.group(2)], digits) == float(stated.group(1))

    @property
    def statistic_name(self) -> str:
        """"median of 5", "mean of 3", "single run": the aggregate in a few words."""
        if self.aggregate == "single":
            return "single run"
        return f"{self.aggregate} of {self.seeds}" if self.seeds else self.aggregate


def read(path: str | Path) -> tuple[list[Reference], list[tuple[str, list[float], float]]]:
    """The references of one file, and each row's (label, values, stated average) for the average check."""
    doc = load_yaml(path)
    data = doc.data
    if not isinstance(data, dict):
        raise BadInput("a references file is a mapping with paper, arxiv and tables", doc.where())
    check_keys(data, _FILE_KEYS, "references key (every file says where its numbers were read: source)",
               lambda k: doc.where(k), required=tuple(_FILE_KEYS))
    found, averages = [], []
    for t, table in enumerate(data["tables"]):
        where = lambda *keys, t=t: doc.where("tables", t, *keys)  # noqa: E731
        check_keys(table, _TABLE_KEYS, "table key", where,
                   required=("table", "statistic", "aggregate", "tasks", "rows"))
        aggregate = coerce(table["aggregate"], AGGREGATES, where("aggregate"), "aggregate")
        seeds = coerce(table.get("seeds"), (int, None), where("seeds"), "seeds")
        multitask = coerce(table.get("multitask", False), bool, where("multitask"), "multitask")
        cost_names = table.get("costs") or {}
        absent = tuple(str(name) for name in table.get("not_in_harness") or ())
        tasks = [(str(task), str(metric)) for task, metric in table["tasks"]]
        for r, row in enumerate(table["rows"]):
            at = lambda *keys, r=r: where("rows", r, *keys)  # noqa: E731
            check_keys(row, _ROW_KEYS, "row key", at, required=("row", "model", "method", "values"))
            costs = row.get("costs") or {}
            check_keys(costs, cost_names, "cost (declare it in the table's costs)", lambda k, r=r: at("costs", k))
            costs = tuple((str(name), coerce(value, float, at("costs", name), name), str(cost_names[name]))
                          for name, value in costs.items())
            values = [coerce(v, float, at("values"), "values") for v in row["values"]]
            spreads = row.get("spreads") or [None] * len(values)
            if len(values) != len(tasks) or len(spreads) != len(tasks):
                raise BadInput(f"row '{row['row']}' has {len(values)} values and {len(spreads)} spreads for "
                               f"{len(tasks)} tasks", at("values"))
            if "avg" in row:
                averages.append((str(row["row"]), values, float(row["avg"])))
            general, per_task = list(table.get("differences", ())), table.get("task_notes") or {}
            for (task, metric), value, spread in zip(tasks, values, spreads):
                differences = tuple(str(d) for d in general) + ((f"{task}: {per_task[task]}",) if task in per_task
                                                                 else ())
                found.append(Reference(str(data["paper"]), str(data["arxiv"]), str(table["table"]), str(row["row"]),
                                       str(row["model"]), str(row["method"]), task, metric, value,
                                       None if spread is None else float(spread), str(table["statistic"]),
                                       aggregate, seeds, str(table.get("split", "")),
                                       None if row.get("params") is None else str(row["params"]),
                                       row.get("setting"), differences, costs, str(data["source"]), absent,
                                       multitask))
    return found, averages


def files() -> list[Path]:
    folder = resources.files("bench") / "references"
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml"))


@functools.lru_cache(maxsize=1)
def shipped() -> tuple[Reference, ...]:
    """Every reference of the files shipped with the package."""
    return tuple(ref for path in files() for ref in read(path)[0])


def matching(model: str, method: str, task: str, multitask: bool = False) -> list[Reference]:
    """The published results for a cell's model, method and task (any metric), in the files' order: a single-task
    cell's, or (`multitask`) those of a model trained on a mixture, for a mixture cell's score on `task`."""
    return [r for r in shipped() if (r.model, r.method, r.task, r.multitask) == (model, method, task, multitask)]
