"""Running a grid: decide which cells need a run, run them through an executor, store each record.

A cell with a record is skipped unless it was `interrupted`; --force reruns every cell,
--retry-failed reruns failed, oom, timeout, killed and diverged cells, and unsupported cells whose
reason lies in the environment (no GPU, a missing package). Records are written as each cell
finishes (in the order cells finish when the executor runs several at once), so an interrupted
grid keeps its work.

Several runners may share one store: a cell is run only under its lock, and only if its record is
still what it was when the runner planned (another runner may have run it meanwhile). A record a
cell process finished but its runner never stored (the runner was killed) waits in the suite's
`.incoming/` folder; the next run adopts it instead of training the cell again.
"""

from __future__ import annotations

import errno
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from bench.files import atomic_write
from bench.plan.cellspec import Cell
from bench.record import problems
from bench.run.executors.cells import interrupted, spool_files
from bench.run.locks import Claim, lock_problem
from bench.run.store import Store, StoreUnwritable

RETRYABLE = ("failed", "oom", "timeout", "killed", "diverged")
INCOMING = ".incoming"


@dataclass
class GridSummary:
    total: int = 0
    statuses: Counter = field(default_factory=Counter)  # statuses of the cells run now
    skipped: int = 0  # cells with a record that needed no run
    busy: int = 0  # cells another runner was running, or ran while this one waited
    adopted: int = 0  # records finished by a runner that died before storing them
    problems: list[str] = field(default_factory=list)  # one line per cell that did not end ok
    notes: list[str] = field(default_factory=list)  # stolen locks, adopted and unusable leftovers

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "ok")

    def line(self, suite: str, results: str) -> str:
        ran = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "nothing run"
        extra = f", {self.busy} run by another runner" if self.busy else ""
        extra += f", {self.adopted} adopted from an interrupted run" if self.adopted else ""
        return f"{suite}: {self.total} cells: {ran}; {self.skipped} already recorded{extra} (records in {results})"


def needs_run(record: dict | None, retry_failed: bool) -> bool:
    """Whether a cell with this record (or none) runs; reads only what `store.plan_view` keeps of a record."""
    if record is None or record["status"] == "interrupted":
        return True
    retryable = record["status"] in RETRYABLE or (record.get("error") or {}).get("environment")
    return bool(retry_failed and retryable)


def plan(cells: list[Cell], store: Store, force: bool = False, retry_failed: bool = False,
         recorded: dict[str, dict] | None = None) -> tuple[list, list]:
    """(cells to run, cells to skip). `recorded`: the suite's records by cell id (Store.scan), when the
    caller has read them already; a cell they say must run is looked at again (another runner, or a record
    adopted from the spool, may have finished it since)."""
    if force:  # whatever is recorded, everything reruns: no record needs reading
        return list(cells), []
    todo, skip = [], []
    for cell in cells:
        known = recorded.get(cell.id) if recorded is not None else None
        record = known if known is not None and not needs_run(known, retry_failed) else store.read(cell.suite, cell.id)
        (todo if needs_run(record, retry_failed) else skip).append(cell)
    return todo, skip


def adopt_incoming(store: Store, suites: set[str]) -> tuple[list[str], list[str]]:
    """Store the records cell processes finished while their runner died; returns (their cell ids, notes).

    A leftover whose cell is locked by a live runner is that runner's and stays. A record is adopted
    only where the store has none or an older one (history keeps the replaced one); output logs and
    partial records of cells no runner holds are removed once their record is settled.
    """
    adopted, notes = [], []
    for suite in sorted(suites):
        folder = store.suite_dir(suite) / INCOMING
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            cell_id = path.name.split(".", 1)[0]
            if lock_problem(store.lock_path(suite, cell_id)) is None:
                continue  # a live runner's cell
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError, RecursionError):
                record = None
            if record is None or problems(record) or record["cell"].get("suite") != suite \
                    or record["cell"]["id"] != cell_id:
                path.rename(path.with_suffix(".unusable"))
                notes.append(f"kept aside an unusable leftover record: {path.with_suffix('.unusable')}")
                continue
            current = store.read(suite, cell_id)
            if current is None or needs_run(current, False) or \
                    str(current.get("created_at") or "") < str(record.get("created_at") or ""):
                store.write(record)
                adopted.append(cell_id)
                notes.append(f"adopted {suite}/{cell_id} ({record['status']}), finished after its runner died")
            path.unlink(missing_ok=True)
        for leftover in sorted([*folder.glob("*.log"), *folder.glob("*.partial")]) if folder.is_dir() else []:
            if lock_problem(store.lock_path(suite, leftover.name.split(".", 1)[0])) is not None \
                    and not leftover.with_suffix(".json").exists():
                leftover.unlink(missing_ok=True)
    return adopted, notes


def steal_locks(cells: list[Cell], store: Store) -> list[str]:
    """Remove the locks of these cells, whoever holds them (`run --steal-locks`); a line per stolen lock."""
    lines = []
    for cell in cells:
        owner = store.steal(cell.suite, cell.id)
        if owner is not None:
            held = ", ".join(f"{k} {owner[k]}" for k in ("host", "pid") if k in owner) or "an unreadable lock"
            lines.append(f"stole the lock of {cell.suite}/{cell.id} ({cell.label} · {cell.model.name} · "
                         f"{cell.task.name} · s{cell.seed}), held by {held}")
    return lines


def run_grid(cells: list[Cell], store: Store, executor, force: bool = False, retry_failed: bool = False,
             quiet: bool = False, steal: bool = False, recorded: dict[str, dict] | None = None,
             trackers=None) -> GridSummary:
    """Run the cells that need it through `executor` (as many at once as it has slots), storing each
    record as it arrives. A cell runs only under its lock, taken just before the executor starts it.
    `trackers` (bench/run/trackers: Trackers): each stored record is logged to them too, here in the runner's
    process, never in a cell's."""
    summary = GridSummary(total=len(cells))
    if steal:
        summary.notes += steal_locks(cells, store)
    adopted, notes = adopt_incoming(store, {c.suite for c in cells})
    summary.adopted = len(adopted)
    summary.notes += notes
    todo, skip = plan(cells, store, force, retry_failed, recorded)
    if hasattr(executor, "order"):  # an executor that packs cells by memory claims the largest first
        todo = executor.order(todo)
    summary.skipped = len(skip)
    if trackers:  # the cells this run does not run are in the trackers too (bench/run/trackers/base.py: ORIGINS)
        trackers.log_stored([(r, "adopted" if c.id in adopted else "recorded") for c in skip
                             if (r := store.read(c.suite, c.id)) is not None])
    planned = {c.id: store.stamp(c.suite, c.id) for c in todo}  # what each record was when planned
    bar = tqdm(total=len(cells), initial=len(skip), desc="grid", unit="cell", disable=quiet, position=0,
               dynamic_ncols=True)
    held: dict[str, tuple[Cell, Claim]] = {}  # cells claimed and not yet stored: the running ones

    def show() -> None:
        if len(held) == 1:
            cell = next(iter(held.values()))[0]
            bar.set_description(f"grid [{cell.label} · {cell.model.name} · {cell.task.name} · s{cell.seed}]")
        else:
            bar.set_description(f"grid [{len(held)} running]" if held else "grid")
        bar.set_postfix(ok=summary.statuses["ok"], failed=summary.failed, running=len(held),
                        skipped=summary.skipped, refresh=False)
        bar.refresh()

    def claimed() -> Iterator[Cell]:
        for cell in todo:
            claim = store.acquire(cell.suite, cell.id)
            if claim is not None and store.stamp(cell.suite, cell.id) != planned[cell.id]:
                claim.release()  # another runner ran it since this runner planned
                claim = None
            if claim is None:
                summary.busy += 1
                bar.update(1)
                continue
            held[cell.id] = (cell, claim)
            show()
            yield cell

    finished = executor.submit(claimed(), lambda cell: _spool(store, cell), todo)
    storing = None
    try:
        for cell, record in finished:
            storing = (cell, record)
            _store(cell, record, store, summary, quiet, trackers)
            storing = None
            held.pop(cell.id)[1].release()
            bar.update(1)
            show()
    except OSError as e:  # the store cannot be written (disk full, read-only): stop, keep what finished
        if e.errno not in UNWRITABLE:
            raise
        raise StoreUnwritable(_unwritable(e, store, storing), e.filename or str(store.root)) from None
    except KeyboardInterrupt:  # SIGINT or SIGTERM: stop the running cells, say so for each, then stop
        finished.close()
        for cell, _ in held.values():
            store.write(interrupted(cell))
            _clear_spool(_spool(store, cell), cell.id)
        raise
    finally:
        finished.close()
        for _, claim in held.values():
            claim.release()
        bar.close()
    if trackers:
        summary.notes += trackers.notes()
    for suite in sorted({c.suite for c in todo}):  # index what this run wrote: the next run need not read it
        store.scan(suite)
    return summary


UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _unwritable(error: OSError, store: Store, storing: tuple[Cell, dict] | None) -> str:
    """What stopped the run and what became of the record being stored: kept in the spool when it can be, where
    the next run adopts it without training again."""
    what = f"cannot write the results store: {error.strerror or error}"
    if storing is None:
        return what + ". Records stored so far are kept; free space or make the store writable, then run again."
    cell, record = storing
    kept = spool_files(_spool(store, cell), cell.id)[0]  # where this runner's cell process wrote it, if it could
    if not kept.is_file():
        try:
            atomic_write(kept, json.dumps(record).encode())
        except OSError:
            return what + f". The record of {cell.line()} could not be kept: the next run trains it again."
    return (what + f". The finished record of {cell.line()} is kept in {kept}: once there is space (or the store "
            "is writable), the same command stores it without training again.")


def _store(cell: Cell, record: dict, store: Store, summary: GridSummary, quiet: bool, trackers=None) -> None:
    store.write(record)
    _clear_spool(_spool(store, cell), cell.id)
    if trackers:  # after the write: a tracker sees only stored records, and its failure never reaches the store
        trackers.log(record)
    status = record["status"]
    summary.statuses[status] += 1
    if quiet:  # no bars: one line per finished cell instead, so a long quiet grid still shows it is alive
        scores = record.get("scores") or {}
        score = (scores.get("metrics") or {}).get(scores.get("main_metric"))
        shown = f" {scores['main_metric']}={score:.2f}" if isinstance(score, (int, float)) else ""
        print(f"{status:<11} {cell.line()}{shown}", file=sys.stderr, flush=True)
    if status != "ok":
        error = record.get("error") or {}
        first_line = ((error.get("message") or "").splitlines() or [""])[0]
        output = [line for line in (error.get("traceback") or "").splitlines() if line.strip()]
        if output and error.get("type") in ("CellCrashed", "Killed", "Timeout"):  # what the process said last
            first_line += f" — last output: {output[-1].strip()}"
        summary.problems.append(f"{status:<11} {cell.line()}: {error.get('type')}: {first_line[:300]}")


def _spool(store: Store, cell: Cell) -> Path:
    """The folder a cell's process writes its record and output into (see adopt_incoming)."""
    return store.suite_dir(cell.suite) / INCOMING


def _clear_spool(spool: Path, cell_id: str) -> None:
    for path in spool_files(spool, cell_id):
        path.unlink(missing_ok=True)
