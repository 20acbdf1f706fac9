"""Executors run cells and hand back records; the runner decides what to run and stores results.

`LocalExecutor` runs one cell at a time, each in a process of its own, so memory peaks are the
cell's own and a crash, OOM kill or hang stays inside it. Processes come from a fork server that has
already imported torch and transformers, which saves seconds per cell without sharing any state
(nothing has run in the server when it forks, and nothing in it has touched CUDA: see bench.run.warm).

A cell process writes its record and its output (stdout and stderr, which the executor shows as it
comes) into the runner's spool folder, `results/<suite>/.incoming/`: a record finished just before
the runner died is still there for the next run to adopt (bench.run.runner), and a crash keeps the end
of its output as evidence. The cell dies with the fork server, which dies with the runner.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

from bench import env
from bench.plan.cellspec import Cell
from bench.record import finish, new_record

PRELOAD = ["bench.run.warm"]
EVIDENCE_LINES = 100  # lines of a crashed cell's output kept in its record
PR_SET_PDEATHSIG = 1


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


def _run_in_child(cell: Cell, quiet: bool, out_path: str, log_path: str, partial_path: str) -> None:
    _die_with_parent()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    import faulthandler

    faulthandler.enable()  # a segfault still leaves a Python traceback in the output
    from bench.cell.recipe import run_cell
    from bench.run.store import atomic_write

    def checkpoint(partial: dict) -> None:
        atomic_write(Path(partial_path), json.dumps(partial, default=str).encode())

    record = run_cell(cell, quiet, checkpoint)
    atomic_write(Path(out_path), json.dumps(record).encode())


def spool_files(spool: Path, cell_id: str) -> tuple[Path, Path, Path]:
    """(record, output log, partial record) a cell process of this runner writes into the spool folder.
    The partial record (what the cell measured so far, training progress) is not a `.json`: it is
    never adopted as a result."""
    stem = spool / f"{cell_id}.{os.getpid()}"
    return stem.with_suffix(".json"), stem.with_suffix(".log"), stem.with_suffix(".partial")


class LocalExecutor:
    name = "local"

    def __init__(self, isolation: str = "process", quiet: bool = False):
        if isolation not in ("process", "inline"):
            raise ValueError(isolation)
        self.isolation = isolation
        self.quiet = quiet

    def run(self, cell: Cell, spool: Path) -> dict:
        if self.isolation == "inline":  # for debugging: no isolation, no timeout
            from bench.cell.recipe import run_cell

            return run_cell(cell, self.quiet)
        return self._run_process(cell, spool)

    def _run_process(self, cell: Cell, spool: Path) -> dict:
        spool.mkdir(parents=True, exist_ok=True)
        out, log, partial = spool_files(spool, cell.id)
        log.write_bytes(b"")
        kills_before = oom_kills()
        proc = _context().Process(target=_run_in_child, args=(cell, self.quiet, str(out), str(log), str(partial)),
                                  name=f"cell-{cell.id}")
        with open(log, "rb") as output:
            try:
                proc.start()  # returns once the fork server has forked the cell: the deadline starts now
                deadline = time.monotonic() + cell.timeout_s
                while proc.is_alive() and time.monotonic() < deadline:
                    proc.join(0.25)
                    self._show(output)
            finally:  # the deadline, or the runner interrupted: the cell never outlives its wait
                timed_out = proc.is_alive()
                if timed_out:
                    proc.kill()
                    proc.join()
                self._show(output)
        try:  # a record written before the deadline stands, even if the process was slow to exit
            return json.loads(out.read_text())
        except (OSError, ValueError):
            pass
        evidence, measured = tail(log), _read_partial(partial)
        if timed_out:
            return _failure(cell, "timeout", "Timeout", f"cell ran longer than its {cell.timeout_s:g} s limit "
                            "(suite key cell_timeout_s) and was killed", evidence, measured)
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            if code == -signal.SIGKILL and oom_kills() not in (None, kills_before):
                return _failure(cell, "oom", "Killed", "cell process was killed by the kernel's out-of-memory "
                                "killer (the cgroup's oom_kill count rose)", evidence, measured)
            return _failure(cell, "killed", "Killed", f"cell process was killed by {name} before writing a "
                            "record (no out-of-memory kill was counted)", evidence, measured)
        return _failure(cell, "failed", "CellCrashed", f"cell process ended with exit code {code} before "
                        "writing a record", evidence, measured)

    def _show(self, output) -> None:
        """Pass the cell's new output (progress bars, warnings) through to the runner's stderr."""
        data = output.read()
        if data and not self.quiet:
            sys.stderr.buffer.write(data)
            sys.stderr.flush()


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


def _failure(cell: Cell, status: str, kind: str, message: str, evidence: str | None = None,
             measured: dict | None = None) -> dict:
    record = new_record(cell)
    for section in KEPT_SECTIONS:
        if isinstance((measured or {}).get(section), dict):
            record[section].update(measured[section])
    record["env"].update(env.collect(probe_device=False))
    return finish(record, status, {"type": kind, "message": message, "where": None, "traceback": evidence})


def interrupted(cell: Cell) -> dict:
    """The record of a cell the runner stopped (SIGINT/SIGTERM) before it finished."""
    return _failure(cell, "interrupted", "Interrupted", "the runner was stopped while this cell ran; "
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
    return _CONTEXT


EXECUTORS = {"local": LocalExecutor}
