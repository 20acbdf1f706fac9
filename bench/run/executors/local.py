"""Cells in processes of this machine: `--jobs N` at once on CPU, or one per GPU of `--gpus`.

Each cell runs in a process of its own (bench/run/executors/cells.py), so memory peaks are the cell's own and a
crash, OOM kill or hang stays inside it; each process on a GPU is pinned to it by CUDA_VISIBLE_DEVICES. Processes
come from a fork server that has already imported torch and transformers, which saves seconds per cell without
sharing any state (nothing has run in the server when it forks, and nothing in it has touched CUDA: see
bench.run.preload).

Each record's `env` says where and beside what it ran: `device_index` (the GPU it was pinned to, null on CPU),
`threads` and `cells_beside` (the most other cells of this executor running at one moment of its run), since
cells sharing a machine change each other's timings.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import time
from typing import Iterable, Iterator

from bench.errors import BadInput
from bench.plan.cellspec import Cell
from bench.run.executors.base import ExecutorSpec, Option, register
from bench.run.executors.cells import POLL_S, PRELOAD_ENV, CellProcess, grid_modules


class Overlaps:
    """When each cell of one submit ran, to say how many ran beside each (`env.cells_beside`): the most
    other cells running at any one moment of its run."""

    def __init__(self):
        self.spans: dict[str, list[float | None]] = {}

    def start(self, cell_id: str) -> None:
        self.spans[cell_id] = [time.monotonic(), None]

    def end(self, cell_id: str) -> int:
        span = self.spans[cell_id]
        span[1] = time.monotonic()
        events = []  # (moment, +1 starts / -1 ends) of the other cells, clipped to this cell's run
        for other, (start, end) in self.spans.items():
            if other != cell_id and start < span[1] and (end is None or end > span[0]):
                events += [(max(start, span[0]), 1), (min(end if end is not None else span[1], span[1]), -1)]
        most = running = 0
        for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at one moment
            running += change
            most = max(most, running)
        return most


class LocalExecutor:
    """Cells in processes of this machine: `jobs` at once (CPU), or one per GPU of `gpus`."""

    name = "local"

    def __init__(self, isolation: str = "process", quiet: bool = False, jobs: int = 1,
                 gpus: list[str] | None = None):
        if isolation not in ("process", "inline"):
            raise ValueError(isolation)
        if jobs < 1:
            raise ValueError(jobs)
        self.isolation, self.quiet = isolation, quiet
        self.devices: list[str | None] = list(gpus) if gpus else [None] * jobs
        self.slots = 1 if isolation == "inline" else len(self.devices)
        self.threads_per_cell = None  # the cores are shared between the slots (bench.plan.grid.cell_threads)

    def submit(self, cells: Iterable[Cell], spool,
               planned: list[Cell] | None = None) -> Iterator[tuple[Cell, dict]]:
        """Yield (cell, record) as cells finish; `spool(cell)` is the folder its process writes into. `cells` may
        be lazy (the runner claims each cell as it is taken); `planned`, every cell it may yield, lets the fork
        server preload only what those need (grid_modules), else it preloads everything."""
        if self.isolation == "inline":  # for debugging: no isolation, no timeout, one at a time
            from bench.cell.recipe import run_cell

            for cell in cells:
                yield cell, run_cell(cell, self.quiet)
            return
        yield from self._submit_processes(iter(cells), spool, planned)

    def _submit_processes(self, cells: Iterator[Cell], spool,
                          planned: list[Cell] | None) -> Iterator[tuple[Cell, dict]]:
        free, running, overlaps = list(self.devices), [], Overlaps()
        outer = os.environ.get(PRELOAD_ENV)  # restored after; the fork server reads it as the first cell starts
        if planned:
            os.environ[PRELOAD_ENV] = ",".join(grid_modules(planned))
        try:
            while True:
                while free and (cell := next(cells, None)) is not None:
                    running.append(CellProcess(cell, spool(cell), self.quiet, free.pop(0), show=self.slots == 1))
                    overlaps.start(cell.id)
                if not running:
                    return
                mp.connection.wait([p.sentinel for p in running], timeout=POLL_S)
                for proc in list(running):
                    record = proc.poll()
                    if record is not None:
                        running.remove(proc)
                        free.append(proc.device)
                        record["env"].update(device_index=proc.device, threads=proc.cell.threads,
                                             cells_beside=overlaps.end(proc.cell.id))
                        yield proc.cell, record
        finally:  # interrupted, or the runner stopped asking: no cell outlives its wait
            for proc in running:
                proc.kill()
            if outer is None:
                os.environ.pop(PRELOAD_ENV, None)
            else:
                os.environ[PRELOAD_ENV] = outer


def parse_gpus(value: str) -> list[str]:
    """`--gpus all` (every GPU this process may use) or `0,1,…` (indices among them), checked against them."""
    from bench.errors import BadInput

    visible = visible_gpus()
    if value.strip() == "all":
        if not visible:
            raise BadInput("--gpus all: no GPU found (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES is empty)",
                           "--gpus")
        return visible
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in visible]
    if not wanted or unknown or len(set(wanted)) != len(wanted):
        raise BadInput(f"--gpus {value!r}: give 'all' or distinct GPU indices among the visible ones: "
                       f"{', '.join(visible) or 'none (no GPU found)'}", "--gpus")
    return wanted


def visible_gpus() -> list[str]:
    """The GPU indices cells may be pinned to: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists.
    Asked without torch, so the runner never initialises CUDA (its fork server must not inherit it)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [v.strip() for v in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if v.strip() and v.strip() != "-1"]
    # nvidia-smi's numbers follow the PCI bus; CUDA numbers the fastest GPU first unless told otherwise, so on a
    # machine of mixed GPUs a cell pinned to "1" would get another GPU than nvidia-smi's 1 (and NVML, which
    # follows the bus, would watch the wrong one). Set here, before the fork server starts, for the cells.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    import subprocess

    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


def _build(quiet: bool, jobs: int, gpus: str | None) -> LocalExecutor:
    if jobs < 1:
        raise BadInput(f"--jobs must be at least 1, got {jobs}", "--jobs")
    if gpus is not None and jobs != 1:
        raise BadInput("give --jobs or --gpus, not both: with --gpus one cell runs on each GPU at a time", "--jobs")
    return LocalExecutor(quiet=quiet, jobs=jobs, gpus=parse_gpus(gpus) if gpus is not None else None)


register(ExecutorSpec("local", "this machine, a process per cell", _build, (
    Option("--jobs", int, "cells at once on CPU, torch threads shared between them", 1),
    Option("--gpus", str, "'all' or GPU indices 0,1,…: one cell per GPU at a time, each pinned with "
                          "CUDA_VISIBLE_DEVICES"),
)))
