"""Executors run cells and hand back records; the runner decides what to run and stores results.

The interface is one call: `submit(cells)` takes an iterable of cells and yields `(cell, record)` as
each finishes, in whatever order they finish. It pulls a cell from the iterable only when it has room
to start it, so the runner can claim each cell just before it starts; closing the iterator (or an
interrupt while waiting on it) stops every running cell. `slots` is how many cells run at once.

`LocalExecutor` runs each cell in a process of its own, so memory peaks are the cell's own and a
crash, OOM kill or hang stays inside it: `jobs` cells at once on CPU, or one cell per GPU with
`gpus`, each process pinned to its GPU by CUDA_VISIBLE_DEVICES. Processes come from a fork server that
has already imported torch and transformers, which saves seconds per cell without sharing any state
(nothing has run in the server when it forks, and nothing in it has touched CUDA: see bench.run.preload).
`bench.run.ray_executor` runs the same cell processes on a Ray cluster.

A cell process writes its record and its output (stdout and stderr, which the executor shows as it
comes when one cell runs at a time) into the runner's spool folder, `results/<suite>/.incoming/`: a
record finished just before the runner died is still there for the next run to adopt
(bench.run.runner), and a crash keeps the end of its output as evidence. The cell dies with the fork
server, which dies with the runner.

Each record's `env` says where and beside what it ran: `device_index` (the GPU it was pinned to,
null on CPU), `threads` and `cells_beside` (the most other cells of this executor running at one moment
of its run, null where unknown), since cells sharing a machine change each other's timings.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

from bench import env
from bench.plan.cellspec import Cell
from bench.record import finish, new_record

PRELOAD = ["bench.run.warm"]
PRELOAD_ENV = "PEFT_BENCH_PRELOAD"  # what the fork server preloads besides its core (bench.run.warm)
EVIDENCE_LINES = 100  # lines of a crashed cell's output kept in its record
PR_SET_PDEATHSIG = 1
POLL_S = 0.25  # how often running cells' output and deadlines are looked at


def _die_with_parent() -> None:
    """Make this cell process die with its runner.

    The fork server exits when its runner does (its "alive" pipe reaches EOF), but multiprocessing
    hands every forked child a write end of that pipe too, which would keep the server, and so the
    cell, running after the runner is killed: close it. Then ask the kernel to SIGKILL this process
    when its parent, the fork server, exits (Linux).
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        os.close(alive)
        server._forkserver_alive_fd = None
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: orphans are possible there
        return
    if os.getppid() == 1:  # the parent died before the request: nobody is waiting for this cell
        os._exit(1)


def _run_in_child(cell: Cell, quiet: bool, out_path: str, log_path: str, partial_path: str,
                  device: str | None) -> None:
    _die_with_parent()
    os.setpgid(0, 0)  # a process group of its own: a kill reaches what the cell started too (CellProcess.kill)
    if device is not None:  # before anything initialises CUDA, which reads it once
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    import faulthandler

    faulthandler.enable()  # a segfault still leaves a Python traceback in the output
    from bench.cell.recipe import run_cell
    from bench.files import atomic_write

    def checkpoint(partial: dict) -> None:
        atomic_write(Path(partial_path), json.dumps(partial, default=str).encode())

    record = run_cell(cell, quiet, checkpoint)
    atomic_write(Path(out_path), json.dumps(record).encode())


def spool_files(spool: Path, cell_id: str) -> tuple[Path, Path, Path]:
    """(record, output log, partial record) a cell process of this runner writes into the spool folder.
    The partial record (what the cell measured so far, training progress) is not a `.json`: it is
    never adopted as a result."""
    stem = f"{cell_id}.{os.getpid()}"  # the runner's pid: two runners of one cell never share these files
    return spool / f"{stem}.json", spool / f"{stem}.log", spool / f"{stem}.partial"


class CellProcess:
    """One cell running in a process of its own: start it, `poll` until it gives its record, or `kill`."""

    def __init__(self, cell: Cell, spool: Path, quiet: bool, device: str | None = None, show: bool = True):
        self.cell, self.device, self.quiet, self.show = cell, device, quiet, show
        spool.mkdir(parents=True, exist_ok=True)
        self.out, self.log, self.partial = spool_files(spool, cell.id)
        self.log.write_bytes(b"")
        self.kills_before = oom_kills()
        self.proc = _context().Process(target=_run_in_child, name=f"cell-{cell.id}", args=(
            cell, quiet, str(self.out), str(self.log), str(self.partial), device))
        self.output = open(self.log, "rb")
        self.proc.start()  # returns once the fork server has forked the cell: the deadline starts now
        self.started = time.monotonic()
        self.deadline = self.started + cell.timeout_s

    @property
    def sentinel(self) -> int:
        return self.proc.sentinel

    def poll(self) -> dict | None:
        """The cell's record once its process has ended or passed its deadline (then it is killed)."""
        self._show()
        if self.proc.is_alive() and time.monotonic() < self.deadline:
            return None
        timed_out = self.proc.is_alive()
        self.kill()
        self.proc.join()
        self._show()
        self.output.close()
        return self._record(timed_out)

    def kill(self) -> None:
        """Kill the cell and every process it started (its process group, which it leads: while it is alive and
        not yet reaped, its pid names that group and nothing else)."""
        if self.proc.is_alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):  # not yet its own group: the cell alone
                self.proc.kill()
            self.proc.join()

    def _record(self, timed_out: bool) -> dict:
        cell = self.cell
        try:  # a record written before the deadline stands, even if the process was slow to exit
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            pass
        evidence, measured = tail(self.log), _read_partial(self.partial)
        if timed_out:
            return failure_record(cell, "timeout", "Timeout", f"cell ran longer than its {cell.timeout_s:g} s "
                                  "limit (suite key cell_timeout_s) and was killed", evidence, measured)
        code = self.proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            ended = {"signal": name}
            if code == -signal.SIGKILL and oom_kills() not in (None, self.kills_before):
                return failure_record(cell, "oom", "Killed", "cell process was killed by the kernel's "
                                      "out-of-memory killer (the cgroup's oom_kill count rose)", evidence, measured,
                                      ended)
            return failure_record(cell, "killed", "Killed", f"cell process was killed by {name} before writing "
                                  "a record (no out-of-memory kill was counted)", evidence, measured, ended)
        return failure_record(cell, "failed", "CellCrashed", f"cell process ended with exit code {code} "
                              "before writing a record", evidence, measured, {"exit_code": code})

    def _show(self) -> None:
        """Pass the cell's new output (progress bars, warnings) through to the runner's stderr."""
        data = self.output.read()
        if data and self.show and not self.quiet:
            sys.stderr.buffer.write(data)
            sys.stderr.flush()


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


def tail(path: Path, lines: int = EVIDENCE_LINES) -> str | None:
    try:
        text = path.read_bytes()[-256 * 1024:].decode("utf-8", "replace")
    except OSError:
        return None
    kept = text.replace("\r", "\n").splitlines()[-lines:]
    return "\n".join(kept) or None


def oom_kills() -> int | None:
    """The kernel's count of OOM kills in this process's cgroup (v2 memory.events), None where unknown."""
    try:
        groups = Path("/proc/self/cgroup").read_text().splitlines()
        path = next(line.split(":", 2)[2] for line in groups if line.startswith("0::"))
        for line in Path(f"/sys/fs/cgroup{path}/memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, StopIteration, ValueError):
        return None
    return None


def _read_partial(path: Path) -> dict:
    """The last partial record a killed cell wrote (empty when none, or unreadable)."""
    try:
        partial = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return partial if isinstance(partial, dict) else {}


# What a killed cell's record keeps of its partial record: the figures it measured before the kill
# (parameters, static memory, FLOPs at inference, training progress: steps, last_loss, elapsed_s).
KEPT_SECTIONS = ("params", "memory", "time", "flops", "train")


def failure_record(cell: Cell, status: str, kind: str, message: str, evidence: str | None = None,
                   measured: dict | None = None, ended: dict | None = None) -> dict:
    """The record of a cell that wrote none itself; `ended`: how its process ended, for the error's
    `exit_code` (a crash) or `signal` (a kill)."""
    record = new_record(cell)
    for section in KEPT_SECTIONS:
        if isinstance((measured or {}).get(section), dict):
            record[section].update(measured[section])
    record["env"].update(env.collect(probe_device=False))
    return finish(record, status, {"type": kind, "message": message, "where": None, "traceback": evidence,
                                   **(ended or {})})


def interrupted(cell: Cell) -> dict:
    """The record of a cell the runner stopped (SIGINT/SIGTERM) before it finished."""
    return failure_record(cell, "interrupted", "Interrupted", "the runner was stopped while this cell ran; "
                          "rerun the same command to run it again")


def grid_modules(cells: list[Cell]) -> list[str]:
    """What the fork server preloads for `cells` besides its core: their architectures' model code and the
    libraries of the metrics they score with. A cell imports whatever else it needs itself."""
    from bench.archs import ARCHS
    from bench.tasks.metrics import METRICS

    modeling = {ARCHS[c.model.arch].modeling for c in cells}
    libraries = {METRICS[m].library for c in cells for m in c.task.evaluation.metrics}
    return sorted(modeling | (libraries - {None}))


_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(PRELOAD)
        else:
            _CONTEXT = mp.get_context("spawn")
        atexit.register(_stop_helpers)
    return _CONTEXT


def _stop_helpers() -> None:
    """At this process's exit, stop the fork server and multiprocessing's resource tracker and wait for them.
    Each would stop by itself once it sees this process gone, a moment later: a finished `peft-bench run`
    would leave them behind, in its process group, for whoever waits on the group. (The stop calls are
    multiprocessing's own, private; where one is missing, the helper stops by itself as before.)"""
    from multiprocessing import forkserver, resource_tracker

    for helper in (getattr(forkserver, "_forkserver", None), getattr(resource_tracker, "_resource_tracker", None)):
        try:
            helper._stop()
        except (AttributeError, OSError, ChildProcessError):
            pass


EXECUTORS = ("local", "ray")


def make_executor(name: str, quiet: bool = False, jobs: int = 1, gpus: str | None = None,
                  ray_address: str | None = None, gpus_per_cell: float | None = None,
                  cpus_per_cell: float | None = None):
    """The executor a command line asks for, its options checked before any work (BadInput names the flag)."""
    from bench.errors import BadInput

    if name not in EXECUTORS:
        raise BadInput(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}", "--executor")
    if name == "ray":
        if jobs != 1 or gpus is not None:
            raise BadInput("--jobs and --gpus are for the local executor; on Ray say what one cell needs with "
                           "--cpus-per-cell and --gpus-per-cell", "--jobs" if jobs != 1 else "--gpus")
        from bench.run.ray_executor import RayExecutor

        return RayExecutor(quiet=quiet, address=ray_address, gpus_per_cell=gpus_per_cell, cpus_per_cell=cpus_per_cell)
    for flag, value in (("--ray-address", ray_address), ("--gpus-per-cell", gpus_per_cell),
                        ("--cpus-per-cell", cpus_per_cell)):
        if value is not None:
            raise BadInput(f"{flag} is an option of --executor ray", flag)
    if jobs < 1:
        raise BadInput(f"--jobs must be at least 1, got {jobs}", "--jobs")
    if gpus is not None and jobs != 1:
        raise BadInput("give --jobs or --gpus, not both: with --gpus one cell runs on each GPU at a time", "--jobs")
    return LocalExecutor(quiet=quiet, jobs=jobs, gpus=parse_gpus(gpus) if gpus is not None else None)


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
