"""Executors run cells and hand back records; the runner decides what to run and stores results.

`LocalExecutor` runs one cell at a time, each in a process of its own, so memory peaks are the
cell's own and a crash, OOM kill or hang stays inside it. Processes come from a fork server that has
already imported torch and transformers, which saves seconds per cell without sharing any state
(nothing has run in the server when it forks). An executor only needs `run(cell) -> record`, so a
distributed one (Ray) plugs in beside it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import tempfile
from pathlib import Path

from bench import env
from bench.grid import Cell
from bench.record import finish, new_record

PRELOAD = ["bench.warm"]


def _run_in_child(cell: Cell, quiet: bool, out_path: str) -> None:
    from bench.cell import run_cell

    record = run_cell(cell, quiet)
    Path(out_path).write_text(json.dumps(record))


class LocalExecutor:
    name = "local"

    def __init__(self, isolation: str = "process", quiet: bool = False):
        if isolation not in ("process", "inline"):
            raise ValueError(isolation)
        self.isolation = isolation
        self.quiet = quiet

    def run(self, cell: Cell) -> dict:
        if self.isolation == "inline":  # for debugging: no isolation, no timeout
            from bench.cell import run_cell

            return run_cell(cell, self.quiet)
        return self._run_process(cell)

    def _run_process(self, cell: Cell) -> dict:
        ctx = _context()
        with tempfile.TemporaryDirectory(prefix="peft-bench-cell-") as tmp:
            out = os.path.join(tmp, "record.json")
            proc = ctx.Process(target=_run_in_child, args=(cell, self.quiet, out), name=f"cell-{cell.id}")
            proc.start()
            proc.join(cell.timeout_s)
            timed_out = proc.is_alive()
            if timed_out:
                proc.kill()
                proc.join()
            try:  # a record written before the deadline stands, even if the process was slow to exit
                return json.loads(Path(out).read_text())
            except (OSError, ValueError):
                pass
            if timed_out:
                return _failure(cell, "timeout", "Timeout", f"cell ran longer than its {cell.timeout_s:g} s limit "
                                "(suite key cell_timeout_s) and was killed")
            code = proc.exitcode
            if code == -signal.SIGKILL:
                return _failure(cell, "oom", "Killed", "cell process was killed by SIGKILL; the kernel's "
                                "out-of-memory killer is the usual cause")
            how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
            return _failure(cell, "failed", "CellCrashed", f"cell process ended with {how} before writing a record")


def _failure(cell: Cell, status: str, kind: str, message: str) -> dict:
    record = new_record(cell)
    record["env"].update(env.collect(probe_device=False))
    return finish(record, status, {"type": kind, "message": message, "where": None, "traceback": None})


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
