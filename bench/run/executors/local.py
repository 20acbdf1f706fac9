"""Cells in processes of this machine: `--jobs N` at once on CPU, or on the GPUs of `--gpus`, packed by memory.

Each cell runs in a process of its own (bench/run/executors/cells.py), so memory peaks are the cell's own and a
crash, OOM kill or hang stays inside it; each process on a GPU is pinned to it by CUDA_VISIBLE_DEVICES. Processes
come from a fork server that has already imported torch and transformers, which saves seconds per cell without
sharing any state (nothing has run in the server when it forks, and nothing in it has touched CUDA: see
bench.run.preload).

With `--gpus` (and `--pack memory`, the default), as many cells run on a GPU at once as their predicted memory
fits, each held to its budget (bench/run/packing.py); a packed cell that runs out of memory all the same is run
again alone on a whole device, and only that run's record is yielded. `--pack off`: one cell per GPU at a time.

Each record's `env` says where and beside what it ran: `device_index` (the GPU it was pinned to, null on CPU),
`device_budget_bytes` (the allocator budget it was held to, null when it had the whole device), `threads` and
`cells_beside` (the most other cells of this executor running at one moment of its run, on its GPU when it had
one), since cells sharing a machine or a device change each other's timings.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import sys
import time
from collections import deque
from typing import Callable, Iterable, Iterator

from bench import methods
from bench.errors import BadInput
from bench.fmt import size
from bench.plan.cellspec import Cell
from bench.run.executors.base import ExecutorSpec, Option, number, register
from bench.run.executors.cells import POLL_S, PRELOAD_ENV, CellProcess, failure_record, grid_modules, spool_files
from bench.run.gpu_ledger import Ledger, Shared, machine_ledger
from bench.run.nvidia_smi import query_gpus
from bench.run.packing import CONTEXT_BYTES, Packer, Placement, cell_budget, packing_order

PACKING = ("memory", "off")


class Overlaps:
    """When each cell of one submit ran, to say how many ran beside each (`env.cells_beside`): the most
    other cells running at any one moment of its run; on a GPU, of the cells on the same GPU."""

    def __init__(self):
        self.spans: dict[str, list] = {}  # cell id -> [start, end or None, device]

    def start(self, cell_id: str, device: str | None = None) -> None:
        self.spans[cell_id] = [time.monotonic(), None, device]

    def end(self, cell_id: str) -> int:
        span = self.spans[cell_id]
        span[1] = time.monotonic()
        events = []  # (moment, +1 starts / -1 ends) of the other cells, clipped to this cell's run
        for other, (start, end, device) in self.spans.items():
            if other != cell_id and device == span[2] and start < span[1] and (end is None or end > span[0]):
                events += [(max(start, span[0]), 1), (min(end if end is not None else span[1], span[1]), -1)]
        most = running = 0
        for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at one moment
            running += change
            most = max(most, running)
        return most


class OneEach:
    """One cell per slot at a time (`--jobs`, or `--pack off`): the packer's interface, budgets ignored."""

    blocked = False  # its slots are this runner's alone: none is held by another

    def __init__(self, devices: list[str | None]):
        self.free = list(devices)

    def where(self, budget: int | None, alone: bool = False, devices: int = 1, cell: str = "") -> Placement | None:
        return Placement(self.free[0], None) if self.free else None

    def place(self, budget: int | None, alone: bool = False, devices: int = 1, cell: str = "") -> Placement | None:
        return Placement(self.free.pop(0), None) if self.free else None

    def release(self, placement: Placement, cell: str = "") -> None:
        self.free.append(placement.device)

    def renewing(self) -> contextlib.nullcontext:
        """Nothing to renew: no ledger holds its slots."""
        return contextlib.nullcontext()

    def withdraw(self) -> None:
        """Nothing to withdraw: it never waits for another runner."""


class LocalExecutor:
    """Cells in processes of this machine: `jobs` at once (CPU), or on the GPUs of `gpus`: packed by predicted
    memory when `rooms` (each GPU's bytes for cells) and `predicted_memory` are given, else one per GPU; with a
    `ledger`, counting what other runners on this machine hold of those GPUs (bench/run/gpu_ledger.py)."""

    name = "local"

    def __init__(self, isolation: str = "process", quiet: bool = False, jobs: int = 1,
                 gpus: list[str] | None = None, rooms: dict[str, int] | None = None,
                 predicted_memory: Callable[[Cell], dict | None] | None = None, gpus_per_cell: int = 1,
                 ledger: Ledger | None = None):
        if isolation not in ("process", "inline"):
            raise ValueError(isolation)
        if jobs < 1:
            raise ValueError(jobs)
        self.isolation, self.quiet = isolation, quiet
        self.devices: list[str | None] = list(gpus) if gpus else [None] * jobs
        self.rooms = rooms if gpus and rooms and predicted_memory else None
        # what each cell demands of the devices' rooms (Packer.demand reads the rooms only, never what is placed)
        self.sizing = Packer(self.rooms, gpus_per_cell) if self.rooms is not None else None
        self.predicted_memory, self.gpus_per_cell = predicted_memory, gpus_per_cell
        self.ledger = ledger if self.rooms is not None else None
        # (cell id, devices) -> its predicted memory section on each of that many devices, as first asked
        self.memories: dict[tuple[str, int], dict | None] = {}
        self.demands: dict[str, tuple[int | None, int]] = {}  # cell id -> (budget per device, devices): Packer.demand
        # Packed, more cells than GPUs may run at once: the cores are still shared as between one cell per GPU (a
        # cell on a GPU spends little CPU time); --threads sets it otherwise.
        self.slots = 1 if isolation == "inline" else len(self.devices)
        self.threads_per_cell = None  # the cores are shared between the slots (bench.plan.grid.cell_threads)

    def memory(self, cell: Cell, shards: int = 1) -> dict | None:
        """The cell's predicted memory on each of `shards` devices (sharded: `predicted_memory(cell, shards=N)`,
        which a scheduler's prediction, asked for one device only, need not take)."""
        if (cell.id, shards) not in self.memories:
            self.memories[cell.id, shards] = self.predicted_memory(cell) if shards == 1 else \
                self.predicted_memory(cell, shards=shards)
        return self.memories[cell.id, shards]

    def budget(self, cell: Cell) -> int | None:
        """The cell's allocator budget on one device (what orders the cells), None when not packing."""
        return None if self.rooms is None else cell_budget(self.memory(cell))

    def demand(self, cell: Cell) -> tuple[int | None, int]:
        """(budget per device, devices) the cell runs with (Packer.demand: BadInput when it fits no device)."""
        if self.rooms is None:
            return None, 1
        if cell.id not in self.demands:
            # the prediction bounds the peak from below unless the estimate says where it departs from a GPU's step,
            # or that it bounds the peak from above (a method whose trained tensors the data choose: its upper bound is
            # a safe budget, but no reason to refuse the cell)
            memory = self.memory(cell) or {}
            bound = not (memory.get("not_modelled") or memory.get("upper_bound"))
            budget, devices = self.sizing.demand(lambda shards: self.memory(cell, shards), cell.line(), bound=bound,
                                                 shardable=methods.for_cell(cell.method).shardable)
            if budget is None and devices > 1:
                print(f"{cell.line()}: its memory sharded over {devices} GPUs is unknown (no prediction): it runs "
                      f"sharded over {devices} empty GPUs without a budget", file=sys.stderr)
            self.demands[cell.id] = budget, devices
        return self.demands[cell.id]

    def refusals(self, cells: list[Cell]) -> list[BadInput]:
        """What `order` would stop the run with, for every cell rather than the first: the BadInput of each cell that
        fits no device even sharded (Packer.demand). `run --dry-run` lists them, so a plan says so before a run."""
        if self.rooms is None or self.isolation == "inline":
            return []
        refused = []
        for cell in cells:
            try:
                self.demand(cell)
            except BadInput as e:
                refused.append(e)
        return refused

    def cells_on_gpu(self) -> bool:
        """Those of --gpus; without it, a cell is pinned to none and sees every GPU this process does."""
        return any(self.devices) or bool(visible_gpus())

    def order(self, cells: list[Cell]) -> list[Cell]:
        """The order the runner claims cells in: packed, largest budget first (bench.run.packing); else as given.
        Packed, each cell's demand is settled here, before any cell starts: a cell that fits no device stops the
        run with BadInput now rather than running out of memory later."""
        if self.rooms is None or self.isolation == "inline":
            return cells
        for cell in cells:
            self.demand(cell)
        return packing_order(cells, {c.id: self.budget(c) for c in cells})

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
        slots = Shared(Packer(self.rooms, self.gpus_per_cell), self.ledger) if self.rooms else OneEach(self.devices)
        upcoming = deque(planned or [])  # the cells the runner may still hand over, in the order it hands them
        running: list[tuple[CellProcess, Placement]] = []
        overlaps = Overlaps()
        outer = os.environ.get(PRELOAD_ENV)  # restored after; the fork server reads it as the first cell starts
        if planned:
            os.environ[PRELOAD_ENV] = ",".join(grid_modules(planned))
        try:
            with slots.renewing():  # the ledger's entries stay renewed while this generator waits at a yield
                try:
                    yield from self._schedule(cells, spool, slots, upcoming, running, overlaps)
                finally:  # interrupted, or the runner stopped asking: no cell outlives its wait, and every one is
                    for proc, _ in running:  # killed before anything waits (the renewal's end, the ledger's lock)
                        proc.kill()
        finally:
            for proc, placement in running:
                slots.release(placement, proc.cell.id)
            if outer is None:
                os.environ.pop(PRELOAD_ENV, None)
            else:
                os.environ[PRELOAD_ENV] = outer

    def _schedule(self, cells: Iterator[Cell], spool, slots: Shared | OneEach, upcoming: deque[Cell],
                  running: list[tuple[CellProcess, Placement]], overlaps: Overlaps) -> Iterator[tuple[Cell, dict]]:
        """Start cells as they fit and yield each one's record as it ends; `running` is the caller's, so what still
        runs when this stops is killed there."""
        waiting: deque[tuple[Cell, bool]] = deque()  # (cell, to run alone): taken, not started (a packed retry)
        while True:
            while True:
                # a new cell is taken (the runner claims it) only when it can start now, or when nothing runs:
                # then it waits for the room other runners hold, or the runner has none left and this ends
                if not waiting:
                    budget, devices = self.demand(upcoming[0]) if upcoming else (None, 1)  # the next planned one's
                    # asked for by name: kept out by other runners, it queues for their room as a placement would
                    if running and slots.where(budget, devices=devices, cell=upcoming[0].id if upcoming else "") \
                            is None:
                        break
                    if (cell := next(cells, None)) is None:  # none left (others took the rest): it waits for nothing
                        upcoming.clear()
                        slots.withdraw()
                        break
                    while upcoming and upcoming.popleft().id != cell.id:  # cells before it: another runner's
                        pass
                    waiting.append((cell, False))
                cell, alone = waiting[0]
                budget, devices = self.demand(cell)
                placement = slots.place(budget, alone, devices, cell.id)
                if placement is None:  # no room until a cell ends
                    break
                waiting.popleft()
                if cell.adapter_dir and "," in (placement.device or ""):  # refused before its ranks start
                    slots.release(placement, cell.id)
                    yield cell, sharded_save_refused(cell, placement)
                    continue
                show = self.slots == 1 and not self.rooms  # one cell at a time: its output shows as it comes
                proc = CellProcess(cell, spool(cell), self.quiet, placement.device, show, placement.budget)
                running.append((proc, placement))
                overlaps.start(cell.id, placement.device)
            if not running:
                if waiting and slots.blocked:  # other runners on this machine hold its room: wait, never fail
                    time.sleep(POLL_S)
                    continue
                if waiting:  # every cell fits an empty machine (Packer.place): a cell left here would be lost
                    raise RuntimeError(f"no device can start {waiting[0][0].line()} on an idle machine")
                return
            mp.connection.wait([proc.sentinel for proc, _ in running], timeout=POLL_S)
            for proc, placement in list(running):
                record = proc.poll()
                if record is None:
                    continue
                running.remove((proc, placement))
                slots.release(placement, proc.cell.id)
                beside = overlaps.end(proc.cell.id)
                if self.rooms and record["status"] == "oom" and not placement.alone:
                    print(f"retrying alone on a whole GPU, after it ran out of memory packed: "
                          f"{proc.cell.line()}", file=sys.stderr, flush=True)
                    spool_files(spool(proc.cell), proc.cell.id)[0].unlink(missing_ok=True)
                    waiting.appendleft((proc.cell, True))
                    continue
                record["env"].update(device_index=placement.device, device_budget_bytes=placement.budget,
                                     threads=proc.cell.threads, cells_beside=beside)
                yield proc.cell, record


def sharded_save_refused(cell: Cell, placement: Placement) -> dict:
    """The record of a cell that would run sharded and save a state (a stage, a task other cells start from, or
    --save-adapters): every rank would write the same files at once, and the saved adapter is not gathered from
    the ranks' shards, so it is refused (`unsupported`) rather than left a corrupt file."""
    return failure_record(cell, "unsupported", "Unsupported", f"this cell fits no single GPU, so it would run "
                          f"sharded over GPUs {placement.device} (--gpus-per-cell), and it saves its state to "
                          f"{cell.adapter_dir}, which a sharded cell cannot do yet: run it on a GPU it fits, or "
                          "without --save-adapters (a stage, or a task other cells start from, always saves)")


def parse_gpus(value: str) -> list[str]:
    """`--gpus all` (every GPU this process may use) or `0,1,…` (indices among them), checked against them."""
    from bench.errors import BadInput

    visible = visible_gpus()
    if value.strip() == "all":
        if not visible:
            raise BadInput("--gpus all: no GPU found (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES is empty)",
                           "--gpus")
        twice = sorted({v for v in visible if visible.count(v) > 1})
        if twice:  # it would be two slots, two cells at once on one GPU
            raise BadInput(f"--gpus all: CUDA_VISIBLE_DEVICES lists GPU {', '.join(twice)} more than once "
                           f"({os.environ.get('CUDA_VISIBLE_DEVICES')}): list each GPU once, or give --gpus with "
                           "distinct indices", "--gpus")
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


def device_rooms(devices: list[str]) -> dict[str, int] | None:
    """Each GPU's memory free for cells as the run starts (its total less what other processes use, 0 when they use
    it all), in bytes, asked of nvidia-smi (`-i` takes an index or a UUID, as CUDA_VISIBLE_DEVICES does): never
    through CUDA, which the runner must not initialise. None when nvidia-smi cannot say for every one of them (no
    answer, or not a total above 0 and a used amount of at least 0)."""
    answers = query_gpus(devices, ["memory.total", "memory.used"])
    if answers is None:
        return None
    try:
        memories = {device: (int(total), int(used)) for device, (total, used) in answers.items()}
    except ValueError:
        return None
    if any(total <= 0 or used < 0 for total, used in memories.values()):
        return None
    return {device: max(total - used, 0) * 1024**2 for device, (total, used) in memories.items()}


def _build(quiet: bool, jobs: int, gpus: str | None, pack: str | None, gpus_per_cell: float | None = None,
           predicted_memory: Callable[[Cell], dict | None] | None = None) -> LocalExecutor:
    if jobs < 1:
        raise BadInput(f"--jobs must be at least 1, got {jobs}", "--jobs")
    if gpus is not None and jobs != 1:
        raise BadInput("give --jobs or --gpus, not both: with --gpus the cells' predicted memory decides how many run "
                       "on each GPU (--pack)", "--jobs")
    if pack is not None and pack not in PACKING:
        raise BadInput(f"--pack {pack!r}: give one of {', '.join(PACKING)}", "--pack")
    if gpus is None:
        if pack is not None:
            raise BadInput("--pack places cells on GPUs: give --gpus too", "--pack")
        return LocalExecutor(quiet=quiet, jobs=jobs)
    pack = pack or PACKING[0]
    devices = parse_gpus(gpus)
    if gpus_per_cell is not None and (gpus_per_cell != int(gpus_per_cell) or not 1 <= gpus_per_cell <= len(devices)
                                      or pack != "memory"):
        raise BadInput(f"--gpus-per-cell {gpus_per_cell:g}: with --pack memory, a whole number of GPUs from 1 to the "
                       f"{len(devices)} of --gpus, over which a cell larger than one GPU is sharded", "--gpus-per-cell")
    rooms = device_rooms(devices) if pack == "memory" and predicted_memory is not None else None
    if pack == "memory" and rooms is None:
        print("--pack memory: nvidia-smi did not give every GPU's memory, so one cell runs on each GPU at a time",
              file=sys.stderr)
    refuse_full_gpus(gpus, rooms)
    return LocalExecutor(quiet=quiet, gpus=devices, rooms=rooms, predicted_memory=predicted_memory,
                         gpus_per_cell=int(gpus_per_cell or 1), ledger=machine_ledger(devices) if rooms else None)


def refuse_full_gpus(gpus: str, rooms: dict[str, int] | None) -> None:
    """BadInput naming --gpus when a GPU has less memory free than one cell's CUDA context (packing.CONTEXT_BYTES):
    any cell placed there could only run out of memory (other processes hold the rest)."""
    full = {device: room for device, room in (rooms or {}).items() if room < CONTEXT_BYTES}
    if full:
        rest = [device for device in rooms if device not in full]
        raise BadInput(f"--gpus {gpus}: " + ", ".join(f"GPU {d} has {size(room)} free" for d, room in full.items())
                       + f" (nvidia-smi: the rest is used by other processes), less than one cell's CUDA context "
                       f"({size(CONTEXT_BYTES)}): give GPUs with room ({', '.join(rest) or 'none of these'}), or free "
                       "them", "--gpus")


register(ExecutorSpec("local", "this machine, a process per cell", _build, (
    Option("--jobs", int, "cells at once on CPU, torch threads shared between them", 1),
    Option("--gpus", str, "'all' or GPU indices 0,1,…: cells pinned with CUDA_VISIBLE_DEVICES, as many on each as "
                          "--pack lets"),
    Option("--pack", str, "with --gpus: 'memory' (the default) runs as many cells on a GPU as their predicted memory "
                          "fits, each held to its budget (docs/scale.md); 'off' one cell per GPU at a time"),
    Option("--gpus-per-cell", number, "with --gpus: a cell larger than any GPU runs sharded (FSDP2) over this many "
                                     "(default 1: no sharding; a cell predicted larger than the largest GPU is "
                                     "refused, or runs alone there where its prediction may run high)"),
), needs_memory=True))
