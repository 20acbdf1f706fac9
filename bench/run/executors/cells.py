"""A cell in a process of its own, as every executor runs it: on this machine (local.py), in a Ray worker
(ray.py) or in a Slurm job (slurm.py). Its memory peaks are its own, and a crash, OOM kill, hang or timeout
stays inside it and becomes a failure record.

A cell process writes its record and its output (stdout and stderr, which the executor shows as it comes when one
cell runs at a time) into a spool folder (the runner's `results/<suite>/.incoming/` locally): a record finished
just before the runner died is still there for the next run to adopt (bench.run.runner), and a crash keeps the
end of its output as evidence. The cell dies with the fork server, which dies with the runner.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench import env
from bench.plan.cellspec import Cell
from bench.record import NUMBER_SECTIONS, finish, new_record

PRELOAD = ["bench.run.warm"]
PRELOAD_ENV = "PEFT_BENCH_PRELOAD"  # what the fork server preloads besides its core (bench.run.warm)
EVIDENCE_LINES = 100  # lines of a crashed cell's output kept in its record
POLL_S = 0.25  # how often running cells' output and deadlines are looked at


def _die_with_parent() -> None:
    """Make this cell process die with its runner.

    The fork server exits when its runner does (its "alive" pipe reaches EOF), but multiprocessing
    hands every forked child a write end of that pipe too, which would keep the server, and so the
    cell, running after the runner is killed: close it. Then this process dies with its parent, the
    fork server (bench/cell/lifeline.py).
    """
    from multiprocessing import forkserver

    from bench.cell.lifeline import die_with_parent

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        os.close(alive)
        server._forkserver_alive_fd = None
    die_with_parent()


def _run_in_child(cell: Cell, quiet: bool, out_path: str, log_path: str, partial_path: str,
                  device: str | None, budget: int | None) -> None:
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
    if budget is not None:  # before the cell allocates anything on its device
        from bench.cell.device_budget import hold_to_budget

        hold_to_budget(budget)
    from bench.files import atomic_write

    checkpoint = functools.partial(write_partial, Path(partial_path))
    shards = len(device.split(",")) if device else 1
    if shards > 1:  # a cell larger than one GPU: one rank per device (bench/cell/ranks.py)
        from bench.cell.ranks import RankLost, run_ranks

        kills_before = oom_kills()
        try:
            record = run_ranks(cell, quiet, checkpoint, shards)
        except RankLost as lost:  # the cell ends as its lost rank did, named
            record = ended_record(cell, lost.exit_code, kills_before, str(lost), tail(Path(log_path)),
                                  _read_partial(Path(partial_path)))
            record["env"]["shards"] = shards
    else:
        from bench.cell.recipe import run_cell

        record = run_cell(cell, quiet, checkpoint)
    atomic_write(Path(out_path), json.dumps(record).encode())


def write_partial(path: Path, partial: dict) -> None:
    """A cell's partial record (what it measured so far), which a killed cell leaves as evidence."""
    from bench.files import atomic_write

    atomic_write(path, json.dumps(partial, default=str).encode())


def spool_files(spool: Path, cell_id: str) -> tuple[Path, Path, Path]:
    """(record, output log, partial record) a cell process of this runner writes into the spool folder.
    The partial record (what the cell measured so far, training progress) is not a `.json`: it is
    never adopted as a result."""
    stem = f"{cell_id}.{os.getpid()}"  # the runner's pid: two runners of one cell never share these files
    return spool / f"{stem}.json", spool / f"{stem}.log", spool / f"{stem}.partial"


class CellProcess:
    """One cell running in a process of its own: start it, `poll` until it gives its record, or `kill`."""

    def __init__(self, cell: Cell, spool: Path, quiet: bool, device: str | None = None, show: bool = True,
                 budget: int | None = None):
        """`budget`: the bytes the cell's CUDA allocator is held to (bench.run.packing); None: its whole device."""
        self.cell, self.device, self.quiet, self.show = cell, device, quiet, show
        spool.mkdir(parents=True, exist_ok=True)
        self.out, self.log, self.partial = spool_files(spool, cell.id)
        self.log.write_bytes(b"")
        self.kills_before = oom_kills()
        self.proc = _context().Process(target=_run_in_child, name=f"cell-{cell.id}", args=(
            cell, quiet, str(self.out), str(self.log), str(self.partial), device, budget))
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
        return ended_record(cell, self.proc.exitcode, self.kills_before, "cell process", evidence, measured)

    def _show(self) -> None:
        """Pass the cell's new output (progress bars, warnings) through to the runner's stderr."""
        data = self.output.read()
        if data and self.show and not self.quiet:
            sys.stderr.buffer.write(data)
            sys.stderr.flush()


def ended_record(cell: Cell, code: int | None, kills_before: int | None, process: str, evidence: str | None,
                 measured: dict) -> dict:
    """The record of a cell whose `process` (the cell's, or a sharded cell's rank) ended with exit `code` before
    writing a record: `oom` when SIGKILL came with a rise of the cgroup's OOM kills since `kills_before`, `killed`
    by another signal, else `failed`."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        ended = {"signal": name}
        if code == -signal.SIGKILL and oom_kills() not in (None, kills_before):
            return failure_record(cell, "oom", "Killed", f"{process} was killed by the kernel's out-of-memory "
                                  "killer (the cgroup's oom_kill count rose)", evidence, measured, ended)
        return failure_record(cell, "killed", "Killed", f"{process} was killed by {name} before writing a record "
                              "(no out-of-memory kill was counted)", evidence, measured, ended)
    return failure_record(cell, "failed", "CellCrashed", f"{process} ended with exit code {code} before writing "
                          "a record", evidence, measured, {"exit_code": code})


def grid_modules(cells: list[Cell]) -> list[str]:
    """What the fork server preloads for `cells` besides its core: their architectures' model code and the
    libraries of the metrics they score with. A cell imports whatever else it needs itself."""
    from bench.archs import ARCHS
    from bench.tasks.metrics import METRICS

    modeling = {ARCHS[c.model.arch].modeling for c in cells}
    libraries = {METRICS[m].library for c in cells for m in c.task.evaluation.metrics}
    return sorted(modeling | (libraries - {None}))


def run_on_worker(cell: Cell, driver_host: str, worker: str, device: str | None) -> dict:
    """A cell on a cluster's worker (a Ray task, a Slurm job), in a process of its own as locally, its output
    spooled on the worker: its record. On another host than the driver's, the data is first checked there (the
    driver checked only its own paths)."""
    host = socket.gethostname()
    problem = _unreadable(cell) if host != driver_host else None
    if problem:
        return failure_record(cell, "failed", "DataUnavailable", f"{worker} on {host}: {problem}; workers read data "
                              "and task files at the driver's paths: put them on a filesystem every node mounts at "
                              "the same path (docs/scale.md)")
    os.environ[PRELOAD_ENV] = ",".join(grid_modules([cell]))  # this worker's fork server: what the cell needs
    with tempfile.TemporaryDirectory(prefix="peft-bench-cell-") as spool:
        process = CellProcess(cell, Path(spool), quiet=True, device=device, show=False)
        while (record := process.poll()) is None:
            multiprocessing.connection.wait([process.sentinel], timeout=POLL_S)
    return record


def _unreadable(cell: Cell) -> str | None:
    from bench.tasks.data import check_available

    try:
        check_available(cell.task, cell.data_dir)
    except Exception as e:  # DataUnavailable, or an OSError reading a folder
        return str(e)
    return None


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


def failure_record(cell: Cell, status: str, kind: str, message: str, evidence: str | None = None,
                   measured: dict | None = None, ended: dict | None = None) -> dict:
    """The record of a cell that wrote none itself; `ended`: how its process ended, for the error's
    `exit_code` (a crash) or `signal` (a kill). It keeps what the cell measured before it ended (`measured`: its
    partial record's number sections: parameters, static memory, FLOPs at inference, training progress)."""
    record = new_record(cell)
    for section in NUMBER_SECTIONS:
        if isinstance((measured or {}).get(section), dict):
            record[section].update(measured[section])
    record["env"].update(env.collect(probe_device=False))
    return finish(record, status, {"type": kind, "message": message, "where": None, "traceback": evidence,
                                   **(ended or {})})


def interrupted(cell: Cell) -> dict:
    """The record of a cell the runner stopped (SIGINT/SIGTERM) before it finished."""
    return failure_record(cell, "interrupted", "Interrupted", "the runner was stopped while this cell ran; "
                          "rerun the same command to run it again")


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


