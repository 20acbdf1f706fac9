"""The executor contract, and the registry every executor enters with the command-line flags it takes.

An executor runs cells and hands back records; the runner decides what to run and stores the records
(bench/run/runner.py). Its one call is `submit(cells, spool, planned)`: it takes cells from the iterable only when
it has room to start one (so the runner claims each cell just before it starts), yields `(cell, record)` as each
finishes, in whatever order, and stops every cell it started when the iterator is closed or interrupted. An executor
may also have `order(cells) -> cells`, the order the runner claims them in (local.py packs the largest first), and
`cells_on_gpu() -> bool`, which GPU-only options are checked against before any work (without it, a cell finds out
itself), and `refusals(cells) -> list[BadInput]`, each cell's error that `order` or `submit` would stop the run with
before any work, which `run --dry-run` lists (without it, the dry-run lists none). Every
cell yields exactly one record: a cell that crashed, ran out of memory, passed its deadline or was lost with its
machine yields a failure record (bench/run/executors/cells.py: failure_record), never nothing.

An executor is one file in this folder that calls `register(ExecutorSpec(...))` and is imported by this
package's __init__: its flags appear in `peft-bench run --help`, a flag given to another executor is refused
before any work, and its `build` imports what the executor needs only when it is chosen.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.errors import BadInput, unknown
from bench.plan.cellspec import Cell


class Executor(Protocol):
    name: str
    slots: int | None  # cells at once; None: as many as the cluster has room for
    threads_per_cell: int | None  # torch threads a cell gets; None: the cores are shared between the slots

    def submit(self, cells: Iterable[Cell], spool: Callable[[Cell], Path],
               planned: list[Cell] | None = None) -> Iterator[tuple[Cell, dict]]: ...


def number(text: str) -> float:
    """A flag's number (an Option's type): a finite float. argparse's float takes 'nan' and 'inf', which no count
    of GPUs, CPUs or gigabytes is: refused by argparse, naming the flag, like any value it cannot read."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


@dataclass(frozen=True)
class Option:
    """A command-line flag of one or more executors; the value reaches `build` as the keyword `name`."""

    flag: str  # --jobs
    type: Callable[[str], Any]
    help: str
    default: Any = None

    @property
    def name(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class ExecutorSpec:
    name: str
    help: str  # one line for `--executor`'s help
    build: Callable[..., Executor]  # build(quiet=..., **options) -> Executor; BadInput names a flag
    options: tuple[Option, ...] = ()
    # Asks a scheduler for each cell's memory: `build` also takes `predicted_memory(cell)`, the memory section
    # `estimate` predicts for the cell (None when unknown), given by the command line (bench/tools/plan_cost.py);
    # `predicted_memory(cell, shards=N)`: one device's of N the cell is sharded over (the local executor asks it);
    # `predicted_memory(cell, step_device="cpu")`: its step on a CPU (a Slurm job without GPUs asks it).
    needs_memory: bool = False


EXECUTORS: dict[str, ExecutorSpec] = {}


def register(spec: ExecutorSpec) -> ExecutorSpec:
    if spec.name in EXECUTORS:
        raise ValueError(f"executor {spec.name!r} is registered twice")
    for option in spec.options:  # a flag two executors share must mean one thing
        for other in EXECUTORS.values():
            same = next((o for o in other.options if o.flag == option.flag), None)
            if same is not None and same.type is not option.type:
                raise ValueError(f"{option.flag}: {spec.name} and {other.name} give it different types")
    EXECUTORS[spec.name] = spec
    return spec


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`--executor` and every registered executor's flags, each help line naming the executors it is for."""
    parser.add_argument("--executor", default="local", help="where cells run: " + "; ".join(
        f"{s.name} ({s.help})" for s in EXECUTORS.values()))
    flags: dict[str, tuple[Option, list[str]]] = {}
    for spec in EXECUTORS.values():
        for option in spec.options:
            flags.setdefault(option.flag, (option, []))[1].append(spec.name)
    for flag, (option, owners) in flags.items():
        default = f" (default {option.default})" if option.default is not None and len(owners) == 1 else ""
        parser.add_argument(flag, type=option.type, default=None, help=f"{', '.join(owners)}: {option.help}{default}")


def make_executor(name: str, quiet: bool = False, given: dict[str, Any] | None = None,
                  predicted_memory: Callable[[Cell], dict | None] | None = None) -> Executor:
    """The executor a command line asks for. `given`: flag values by option name (None: not given); a flag of
    another executor is refused, naming it, before any work."""
    if name not in EXECUTORS:
        raise unknown("executor", name, EXECUTORS, "--executor")
    spec, given = EXECUTORS[name], {k: v for k, v in (given or {}).items() if v is not None}
    own = {o.name: o for o in spec.options}
    for key in given:
        if key not in own:
            flag = "--" + key.replace("_", "-")
            owners = [s.name for s in EXECUTORS.values() if any(o.name == key for o in s.options)]
            raise BadInput(f"{flag} is an option of --executor {' or '.join(owners)}, not of {name}", flag)
    values = {key: given.get(key, option.default) for key, option in own.items()}
    if spec.needs_memory:
        values["predicted_memory"] = predicted_memory
    return spec.build(quiet=quiet, **values)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The executor flags of a parsed command line, by option name."""
    names = {o.name for spec in EXECUTORS.values() for o in spec.options}
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
