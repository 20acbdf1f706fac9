"""Cells as Slurm jobs, submitted with submitit: the grid on a university cluster.

Each cell is one job, asking for what that cell needs: `--cpus-per-cell` CPUs (also its torch threads),
`--gpus-per-cell` GPUs, host memory from the cell's predicted peak (`estimate`, the same prediction the memory
figures check; `--mem-per-cell` overrides it) and a time limit of the cell's deadline (the suite's
`cell_timeout_s`) plus START_MARGIN_S. The job runs the same cell process a local run starts, on its node, and
returns the record to the driver, the runner, which stores it: as on Ray, a crash, hang or timeout inside the job
becomes a record. Cells are submitted only while fewer than `--slurm-max-jobs` of this run's jobs are queued or
running, so a cell's lock is taken just before its job is submitted.

A job that Slurm ends before the cell could write its record (the job's time limit, its memory limit, a node
lost, `scancel`) yields a record saying so: `timeout`, `oom` or `killed`, from the job's accounting state where
the cluster keeps accounting (`sacct`), else from what Slurm wrote into the job's log, with the log's end as
evidence. Interrupting the runner cancels its jobs and records their cells `interrupted`, as locally. A job
also leaves its record in the runner's spool folder (results/<suite>/.incoming/), so one that finishes after its
runner was killed is adopted by the next run instead of training again.

submitit keeps each job's files (the pickled cell, the result, the job's log) under results/<suite>/.slurm/: the
results folder, the data and the Python environment must be on a filesystem every node mounts at the same path
(docs/scale.md). A job's files are removed once its record is stored.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from bench.errors import BadInput
from bench.files import atomic_write
from bench.plan.cellspec import Cell
from bench.run.executors.base import ExecutorSpec, Option, number, register
from bench.run.executors.cells import failure_record, run_on_worker, spool_files

INSTALL_HINT = "pip install 'peft-bench[slurm]' (from a checkout: pip install -e '.[slurm]')"
START_MARGIN_S = 300  # a job's time limit beyond its cell's deadline: Python's start and the job's own files
# A cell process's resident memory besides its model: Python, torch, transformers and the tokenised data
# (measured: the smoke suite's cells peak at 0.9-1.3 GB RSS with models of a few MB).
PROCESS_BYTES = 2 * 1024**3
MEMORY_MARGIN = 1.25  # over the predicted bytes: the prediction is of tensors, not of the allocator's slack
POLL_S = 1.0  # how often the queue is asked about this run's jobs
GONE_GRACE_S = 10.0  # after a job leaves the queue, how long its result file may take to show on the driver's side
ENDED_BY_SLURM = {"TIMEOUT": "timeout", "DEADLINE": "timeout", "OUT_OF_MEMORY": "oom"}  # else `killed`


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise BadInput(f"--executor slurm needs submitit, which is not installed: {INSTALL_HINT}",
                       "--executor") from None
    return submitit


class SlurmExecutor:
    name = "slurm"

    def __init__(self, quiet: bool = False, partition: str | None = None, account: str | None = None,
                 max_jobs: int = 16, cpus_per_cell: float = 1, gpus_per_cell: float = 0,
                 mem_per_cell: float | None = None, predicted_memory: Callable[[Cell], dict | None] | None = None):
        for flag, value, least in (("--slurm-max-jobs", max_jobs, 1), ("--cpus-per-cell", cpus_per_cell, 1),
                                   ("--gpus-per-cell", gpus_per_cell, 0), ("--mem-per-cell", mem_per_cell, 0.1)):
            if value is not None and not value >= least:
                raise BadInput(f"{flag} must be at least {least:g}, got {value:g}", flag)
        for flag, value in (("--cpus-per-cell", cpus_per_cell), ("--gpus-per-cell", gpus_per_cell)):
            if value != int(value):
                raise BadInput(f"{flag}: Slurm allocates whole CPUs and GPUs, got {value:g}", flag)
        self.submitit = _import_submitit()
        if shutil.which("sbatch") is None:
            raise BadInput("--executor slurm: no `sbatch` on PATH: run on a Slurm login node (or start the one-node "
                           "test cluster: bash scripts/slurm/up.sh)", "--executor")
        self.quiet, self.partition, self.account = quiet, partition, account
        self.cpus, self.gpus, self.mem_gb = int(cpus_per_cell), int(gpus_per_cell), mem_per_cell
        self.predicted_memory = predicted_memory
        self.slots = max_jobs
        self.threads_per_cell = self.cpus

    def submit(self, cells: Iterable[Cell], spool: Callable[[Cell], Path],
               planned: list[Cell] | None = None) -> Iterator[tuple[Cell, dict]]:
        """Yield (cell, record) as this run's jobs end. `planned`, every cell it may be given: each distinct request
        among them is first put to Slurm as a test (`sbatch --test-only`), so a request no node can meet (more
        memory than any has, an unknown partition) stops the run before any cell is claimed or submitted."""
        self.check_requests(planned or [])
        source, pending, driver = iter(cells), {}, socket.gethostname()
        try:
            while True:
                while len(pending) < self.slots and (cell := next(source, None)) is not None:
                    pending[self._submit(cell, spool(cell), driver)] = cell
                if not pending:
                    return
                for job in self._ended(list(pending)):
                    cell = pending.pop(job)
                    record = self._record(job, cell)
                    _remove_job_files(job)
                    yield cell, record
                time.sleep(POLL_S)
        finally:  # interrupted, or the runner stopped asking: no job of this run outlives it
            for job in pending:
                job.cancel(check=False)
                _remove_job_files(job)

    def cells_on_gpu(self) -> bool:
        return self.gpus > 0

    def resources(self, cell: Cell) -> dict:
        """What one cell's job asks Slurm for (submitit's parameter names)."""
        wanted = {"cpus_per_task": self.cpus, "time": math.ceil((cell.timeout_s + START_MARGIN_S) / 60),
                  "job_name": f"peft-bench-{cell.suite}-{cell.id}"[:128], "ntasks_per_node": 1}
        if self.gpus:
            wanted["gpus_per_node"] = self.gpus
        if self.partition:
            wanted["partition"] = self.partition
        if self.account:
            wanted["account"] = self.account
        on_gpu = self.gpus > 0  # a job without GPUs trains on the host's CPU, in its precision and kernels
        megabytes = self.mem_gb * 1024 if self.mem_gb is not None else host_megabytes(
            self.predicted_memory(cell, step_device="cuda" if on_gpu else "cpu") if self.predicted_memory else None,
            on_gpu=on_gpu)
        if megabytes is not None:  # unknown: the partition's default memory
            wanted["mem"] = f"{math.ceil(megabytes)}M"
        return wanted

    def check_requests(self, cells: list[Cell]) -> None:
        """BadInput naming the first cell whose job Slurm would refuse, and why (sbatch's own words)."""
        tried = set()
        for cell in cells:
            wanted = {k: v for k, v in self.resources(cell).items() if k != "job_name"}
            key = tuple(sorted(wanted.items()))
            if key in tried:
                continue
            tried.add(key)
            flags = [f"--{name.replace('_', '-')}={value}" for name, value in key]
            try:
                test = subprocess.run(["sbatch", "--test-only", *flags, "--wrap", "true"], capture_output=True,
                                      text=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as e:
                raise BadInput(f"cannot ask Slurm whether it can run {cell.line()}: {e}", "--executor") from None
            if test.returncode != 0:
                said = " ".join(test.stderr.split())[-600:]
                raise BadInput(f"Slurm would refuse the job of {cell.line()} ({' '.join(flags)}): {said}",
                               "--executor") from None

    def _submit(self, cell: Cell, spool: Path, driver: str):
        executor = self.submitit.SlurmExecutor(folder=spool.parent / ".slurm" / "%j", max_num_timeout=0)
        executor.update_parameters(**self.resources(cell))
        kept = spool_files(spool, cell.id)[0]  # this runner's spool name for the cell: its next run adopts it
        try:
            return executor.submit(_cell_in_job, cell, driver, str(kept))
        except Exception as e:  # sbatch refused the job (no such partition, more memory than any node has, ...)
            raise BadInput(f"Slurm refused the job of {cell.line()}: {str(e).strip()[-600:]}",
                           "--executor slurm") from None

    def _ended(self, jobs: list) -> list:
        """The jobs among `jobs` that have ended: with a result file, or no longer in Slurm's queue (then given
        GONE_GRACE_S for the result file to show, as a shared filesystem may be slow to)."""
        queued = _queued({job.job_id for job in jobs})
        ended, now = [], time.monotonic()
        for job in jobs:
            if job.paths.result_pickle.exists():
                ended.append(job)
            elif queued is not None and job.job_id not in queued:
                gone = job.__dict__.setdefault("_bench_gone_at", now)
                if now - gone >= GONE_GRACE_S:
                    ended.append(job)
        return ended

    def _record(self, job, cell: Cell) -> dict:
        """The job's record: the cell's own, or one saying how the job ended without it."""
        if job.paths.result_pickle.exists():
            try:
                return job.result()
            except self.submitit.core.utils.FailedJobError as e:  # the job's Python failed outside the cell
                if "timed-out" in str(e):  # submitit's own note on Slurm's warning before the job's time limit
                    return failure_record(cell, "timeout", "SlurmJobEnded", f"Slurm job {job.job_id} reached its "
                                          "time limit before the cell wrote its record", str(e)[-4000:])
                return failure_record(cell, "failed", "SlurmJobFailed", f"Slurm job {job.job_id} failed before the "
                                      "cell could run", str(e)[-4000:])
        log = _log_tail(job)
        state = _accounted_state(job.job_id) or _state_in_log(log)
        status = ENDED_BY_SLURM.get(state, "killed")
        how = state or "how is not known: no accounting, nothing in its log"
        return failure_record(cell, status, "SlurmJobEnded", f"Slurm job {job.job_id} ended ({how}) before the cell "
                              "wrote its record", log)


def _remove_job_files(job) -> None:
    """The job's folder, the links submitit left beside it to its submission script, and the jobs' folder once
    it holds nothing more."""
    folder = Path(job.paths.folder)
    shutil.rmtree(folder, ignore_errors=True)
    for link in folder.parent.glob(".submission_file_*.sh"):
        if link.is_symlink() and not link.exists():
            link.unlink(missing_ok=True)
    try:
        folder.parent.rmdir()
    except OSError:  # other jobs' files are still there
        pass


def _cell_in_job(cell: Cell, driver_host: str, kept: str) -> dict:
    """The body of a cell's Slurm job: the cell in a process of its own, as locally; its record, also written to
    the driver's spool (a runner killed meanwhile adopts it at its next run)."""
    device = os.environ.get("CUDA_VISIBLE_DEVICES") or None  # the GPUs Slurm gave the job
    record = run_on_worker(cell, driver_host, "Slurm job", device)
    # cells_beside: Slurm places jobs where it likes, so which cells shared this node is not known here.
    record["env"].update(device_index=device, device_budget_bytes=None, threads=cell.threads, cells_beside=None)
    try:
        atomic_write(Path(kept), json.dumps(record).encode())
    except OSError:  # the spool is not reachable from this node: the record still returns through submitit
        pass
    return record


def host_megabytes(memory: dict | None, on_gpu: bool) -> float | None:
    """The host memory to ask for a cell (MiB): its predicted peak on CPU, where the device is the host (on a GPU:
    its weights, which pass through host memory as they load), plus a process's own, with a margin. None when
    the prediction is unknown."""
    if not memory:
        return None
    tensors = memory.get("weights_bytes") if on_gpu else memory.get("predicted_peak_bytes")
    if not isinstance(tensors, int):
        return None
    return (PROCESS_BYTES + MEMORY_MARGIN * tensors) / 1024**2


def _queued(ids: set[str]) -> set[str] | None:
    """Which of these job ids Slurm still holds (pending, running, completing); None when squeue cannot say."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(sorted(ids))], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # squeue refuses ids it no longer knows when all of them are gone
        return set() if "Invalid job id" in out.stderr else None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _accounted_state(job_id: str) -> str | None:
    """The job's final state from Slurm's accounting (TIMEOUT, OUT_OF_MEMORY, CANCELLED, ...); None where the
    cluster keeps no accounting."""
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    states = [line.split()[0] for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    return states[0] if states else None


def _state_in_log(log: str | None) -> str | None:
    """What slurmstepd wrote into the job's log when it ended the job."""
    text = log or ""
    if "DUE TO TIME LIMIT" in text:
        return "TIMEOUT"
    if "oom_kill" in text or "oom-kill" in text or "Out Of Memory" in text:
        return "OUT_OF_MEMORY"
    if "CANCELLED" in text:
        return "CANCELLED"
    return None


def _log_tail(job, size: int = 8192) -> str | None:
    parts = []
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            parts.append(Path(path).read_bytes()[-size:].decode("utf-8", "replace"))
        except OSError:
            continue
    return "\n".join(p for p in parts if p.strip()) or None


def _build(quiet: bool, slurm_partition: str | None, slurm_account: str | None, slurm_max_jobs: int,
           cpus_per_cell: float | None, gpus_per_cell: float | None, mem_per_cell: float | None,
           predicted_memory: Callable[[Cell], dict | None] | None = None) -> SlurmExecutor:
    return SlurmExecutor(quiet=quiet, partition=slurm_partition, account=slurm_account, max_jobs=slurm_max_jobs,
                         cpus_per_cell=1 if cpus_per_cell is None else cpus_per_cell,
                         gpus_per_cell=0 if gpus_per_cell is None else gpus_per_cell,
                         mem_per_cell=mem_per_cell, predicted_memory=predicted_memory)


register(ExecutorSpec("slurm", "a Slurm cluster, a job per cell, through submitit; needs the `slurm` extra", _build, (
    Option("--slurm-partition", str, "the partition jobs go to (default: the cluster's default partition)"),
    Option("--slurm-account", str, "the account jobs are charged to"),
    Option("--slurm-max-jobs", int, "this run's jobs queued or running at once", 16),
    Option("--gpus-per-cell", number, "GPUs one cell asks for (default 0)"),
    Option("--cpus-per-cell", number, "CPUs one cell asks for, also its torch threads (default 1)"),
    Option("--mem-per-cell", number, "host memory one cell's job asks for, in GB (default: the cell's predicted peak "
                                    "plus a process's own, see docs/scale.md)"),
), needs_memory=True))
