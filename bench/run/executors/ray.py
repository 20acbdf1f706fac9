"""Cells as Ray tasks: the grid on a Ray cluster, or on a local Ray instance started for the run.

Each cell is one Ray task. The task starts the same cell process a local run starts
(bench/run/executors/cells.py) inside its Ray worker and waits for it, so a cell is isolated as it
is locally (its own memory peak; a crash, hang or OOM kill stays inside it and becomes a record) and
its deadline counts from the moment it starts, not from when Ray queued it. The worker returns the
record and the driver, the runner, writes it: workers need no access to the results store, so a
cluster needs no shared filesystem for results. Cells are handed to Ray only as the cluster has room
for them (its CPUs and GPUs over what one cell asks), so a cell's lock is taken just before it runs.

Workers read the cell's data and task files at the paths the driver gave; a worker on another host
that cannot read them returns a `failed` record saying which file and why (docs/scale.md: use a
filesystem every node mounts at the same path, or the hub). Every node needs peft-bench installed.

Without an address a local Ray instance is started for the run, and its session files (sockets,
logs, object spill) stay in a temporary folder removed afterwards; its authentication token is
generated for the run and never written to the home folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Iterable, Iterator

from bench.env import usable_cores
from bench.errors import BadInput
from bench.plan.cellspec import Cell
from bench.run.executors.base import ExecutorSpec, Option, number, register
from bench.run.executors.cells import POLL_S, failure_record, run_on_worker

INSTALL_HINT = "pip install 'peft-bench[ray]' (from a checkout: pip install -e '.[ray]')"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BadInput(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}", "--executor") from None
    return ray


class RayExecutor:
    name = "ray"

    def __init__(self, quiet: bool = False, address: str | None = None, gpus_per_cell: float | None = None,
                 cpus_per_cell: float | None = None, local_cpus: int | None = None):
        self.ray = _import_ray()
        for flag, value, least in (("--gpus-per-cell", gpus_per_cell, 0), ("--cpus-per-cell", cpus_per_cell, 1)):
            if value is not None and not value >= least:
                raise BadInput(f"{flag} must be at least {least}, got {value:g}", flag)
        if address is not None:
            _reachable(address)
        self.quiet, self.address = quiet, address
        self.gpus_per_cell = gpus_per_cell or 0
        self.cpus_per_cell = cpus_per_cell or 1
        self.local_cpus = local_cpus  # a local instance's CPUs (default: this process's usable cores)
        self.threads_per_cell = int(self.cpus_per_cell)  # torch threads of a cell: the CPUs Ray gives it
        self.slots = None  # as many as the cluster has room for

    def cells_on_gpu(self) -> bool:
        return self.gpus_per_cell > 0

    def submit(self, cells: Iterable[Cell], spool=None, planned=None) -> Iterator[tuple[Cell, dict]]:
        """Yield (cell, record) as cells finish on the cluster; `spool` is unused (records come back), and so is
        `planned` (a Ray worker has no fork server to preload: each cell imports what it needs)."""
        ray, started = self.ray, self._connect()
        source, pending, driver = iter(cells), {}, socket.gethostname()
        try:
            task = ray.remote(_cell_on_worker).options(num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell,
                                                       max_retries=0)
            while True:
                room = self._room()  # asked once per poll: the cluster may grow or shrink meanwhile
                while len(pending) < room and (cell := next(source, None)) is not None:
                    pending[task.remote(cell, driver)] = cell
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    cell = pending.pop(ref)
                    yield cell, self._result(ref, cell)
        finally:  # interrupted, or the runner stopped asking: cancel what still runs
            for ref in pending:
                ray.cancel(ref, force=True)
            if started is not None:
                folder, watchdog = started
                ray.shutdown()
                shutil.rmtree(folder, ignore_errors=True)
                watchdog.stdin.close()  # it wakes, finds nothing left, and ends
                watchdog.wait()

    def _result(self, ref, cell: Cell) -> dict:
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ActorDiedError) as e:
            what = "its node was lost" if isinstance(e, exceptions.NodeDiedError) else "the worker process died"
            return failure_record(cell, "killed", "WorkerLost", f"the Ray worker running this cell ended before "
                                  f"returning a record: {what} ({type(e).__name__})", str(e)[-4000:])
        except exceptions.RayError as e:
            return failure_record(cell, "failed", type(e).__name__, f"Ray could not run this cell: {str(e)[:500]}",
                                  str(e)[-4000:])

    def _room(self) -> int:
        """Cells the cluster can run at once: its CPUs (and GPUs) over what one cell asks for."""
        total = self.ray.cluster_resources()
        room = int(total.get("CPU", 0) // self.cpus_per_cell)
        if self.gpus_per_cell:
            room = min(room, int(total.get("GPU", 0) // self.gpus_per_cell))
        return max(1, room)

    def _connect(self) -> tuple[str, subprocess.Popen] | None:
        """Join the cluster at `address`, or start a local instance; returns a started instance's folder and its
        watchdog. Ray's own SIGTERM handler is put back to the runner's (which records the running cells
        `interrupted`, as locally)."""
        runner_handler = signal.getsignal(signal.SIGTERM)
        try:
            return self._init()
        finally:
            signal.signal(signal.SIGTERM, runner_handler)

    def _init(self) -> tuple[str, subprocess.Popen] | None:
        ray = self.ray
        if self.address is not None:
            try:
                ray.init(address=self.address, log_to_driver=not self.quiet, logging_level="ERROR")
            except Exception as e:  # no cluster there, or one that refuses this driver: before any cell ran
                raise BadInput(f"cannot join a Ray cluster at {self.address}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}", "--ray-address") from None
            return None
        folder = tempfile.mkdtemp(prefix="peft-bench-ray-")
        if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # else Ray writes one to ~/.ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        cpus = self.local_cpus or usable_cores()
        # Workers import the suite's method modules as the driver does: give them the driver's path.
        path = os.pathsep.join([os.getcwd(), *filter(None, [os.environ.get("PYTHONPATH")])])
        # Started first: if this process is killed (-9), the watchdog stops the instance and removes its folder
        # at once, where Ray's own processes would linger for a minute and leave the folder behind.
        watchdog = subprocess.Popen([sys.executable, "-m", "bench.run.executors.ray_watchdog", folder],
                                    stdin=subprocess.PIPE, start_new_session=True)
        ray.init(num_cpus=cpus, include_dashboard=False, _temp_dir=folder, log_to_driver=False,
                 logging_level="ERROR", runtime_env={"env_vars": {"PYTHONPATH": path}})
        return folder, watchdog


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody answers at: Ray itself retries connecting for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # `auto` and other forms Ray resolves itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BadInput(f"cannot join a Ray cluster at {address}: nothing answers there ({e.strerror or e}); "
                       "start one with `ray start --head`, or leave --ray-address out to start a local one",
                       "--ray-address") from None


def _cell_on_worker(cell: Cell, driver_host: str) -> dict:
    """The body of a cell's Ray task: the cell in a process of its own, as locally; returns its record."""
    import ray

    gpus = ray.get_gpu_ids()
    device = ",".join(str(g) for g in gpus) if gpus else None
    record = run_on_worker(cell, driver_host, "Ray worker", device)
    # cells_beside: Ray places tasks where it likes, so which cells shared this node is not known here.
    record["env"].update(device_index=device, device_budget_bytes=None, threads=cell.threads, cells_beside=None)
    return record


def _build(quiet: bool, ray_address: str | None, gpus_per_cell: float | None,
           cpus_per_cell: float | None) -> RayExecutor:
    return RayExecutor(quiet=quiet, address=ray_address, gpus_per_cell=gpus_per_cell, cpus_per_cell=cpus_per_cell)


register(ExecutorSpec("ray", "a Ray cluster, or a local Ray instance; needs the `ray` extra", _build, (
    Option("--ray-address", str, "the cluster to join (auto, or HOST:PORT); default: start a local Ray instance "
                                 "for this run"),
    Option("--gpus-per-cell", number, "GPUs one cell asks for (default 0)"),
    Option("--cpus-per-cell", number, "CPUs one cell asks for, also its torch threads (default 1)"),
)))
