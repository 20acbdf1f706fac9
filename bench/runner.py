"""Running a grid: decide which cells need a run, run them through an executor, store each record.

A cell with an `ok` record is skipped; --force reruns it, --retry-failed reruns failed, oom and
timeout cells, and unsupported cells whose reason lies in the environment (no GPU, a missing package). Records are written as each cell finishes, so an interrupted grid keeps its work.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from bench.grid import Cell
from bench.store import Store

RETRYABLE = ("failed", "oom", "timeout")


@dataclass
class GridSummary:
    total: int = 0
    statuses: Counter = field(default_factory=Counter)  # statuses of the cells run now
    skipped: int = 0  # cells with a record that needed no run
    busy: int = 0  # cells another runner was running
    problems: list[str] = field(default_factory=list)  # one line per cell that did not end ok

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "ok")

    def line(self, suite: str, results: str) -> str:
        ran = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "nothing run"
        extra = f", {self.busy} running elsewhere" if self.busy else ""
        return f"{suite}: {self.total} cells: {ran}; {self.skipped} already recorded{extra} (records in {results})"


def plan(cells: list[Cell], store: Store, force: bool = False, retry_failed: bool = False) -> tuple[list, list]:
    """(cells to run, cells to skip)."""
    todo, skip = [], []
    if force:  # whatever is recorded, everything reruns: no record needs reading
        return list(cells), []
    for cell in cells:
        record = store.read(cell.suite, cell.id)
        retryable = record is not None and (record["status"] in RETRYABLE or (record.get("error") or {}).get("environment"))
        rerun = record is None or (retry_failed and retryable)
        (todo if rerun else skip).append(cell)
    return todo, skip


def run_grid(cells: list[Cell], store: Store, executor, force: bool = False, retry_failed: bool = False,
             quiet: bool = False) -> GridSummary:
    todo, skip = plan(cells, store, force, retry_failed)
    summary = GridSummary(total=len(cells), skipped=len(skip))
    bar = tqdm(total=len(cells), initial=len(skip), desc="grid", unit="cell", disable=quiet, position=0,
               dynamic_ncols=True)
    for cell in todo:
        bar.set_description(f"grid [{cell.label} · {cell.model.name} · {cell.task.name} · s{cell.seed}]")
        with store.claim(cell.suite, cell.id) as mine:
            if not mine:
                summary.busy += 1
            else:
                record = executor.run(cell)
                store.write(record)
                status = record["status"]
                summary.statuses[status] += 1
                if status != "ok":
                    error = record.get("error") or {}
                    first_line = ((error.get("message") or "").splitlines() or [""])[0]
                    summary.problems.append(f"{status:<11} {cell.line()}: {error.get('type')}: {first_line[:200]}")
        bar.update(1)
        bar.set_postfix(ok=summary.statuses["ok"], failed=summary.failed, skipped=summary.skipped, refresh=False)
    bar.close()
    return summary
