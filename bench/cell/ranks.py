"""A sharded cell's ranks (bench/cell/sharded.py says how a sharded cell runs): started by the cell's process, one
per device, torchrun-style, each running the recipe; rank 0's record is the cell's, with the status and error of
the rank that failed first where one did (cell_record)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from bench.cell.lifeline import die_with_parent
from bench.cell.recipe import run_cell
from bench.files import atomic_write
from bench.record import finish

POLL_S = 0.5  # how often the ranks' records are looked at while they run
# A collective that waits this long has lost a peer (a step's all-gathers take seconds); NCCL's default is 10
# minutes. The ranks' process stops the peers of a failed rank at once (run_ranks), so this bounds only the wait of a
# rank whose peer died without a record.
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=5)


class RankLost(Exception):
    """A rank of a sharded cell ended without a record (killed by a signal, or an error outside the recipe); its
    peers were stopped. `exit_code`: the rank process's (negative: minus the signal that killed it)."""

    def __init__(self, rank: int, shards: int, exit_code: int):
        super().__init__(f"rank {rank} of {shards}")
        self.rank, self.shards, self.exit_code = rank, shards, exit_code


def run_ranks(cell, quiet: bool, checkpoint, shards: int) -> dict:
    """Run the cell on `shards` ranks, one process each (this process waits for them), and return its record
    (cell_record) with `env.shards`. As soon as a rank's record says it failed, the ranks still running are stopped:
    on NCCL they would wait in their next collective until its timeout, and the cell end `timeout` with the cause
    lost. A rank that ends without a record (killed, crashed, or even exited with code 0) is seen as it ends: its
    peers are stopped and RankLost names it (the cell process records it as its own end:
    bench/run/executors/cells.py). `checkpoint`: as run_cell takes it, but picklable (a functools.partial of a
    module's function): rank 0 calls it."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on this host for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="peft-bench-ranks-") as folder:
        # files, not pipes: a large record never blocks a rank while we join
        context = mp.start_processes(_rank, args=(shards, port, cell, quiet, checkpoint, folder, os.getpid()),
                                     nprocs=shards, start_method="spawn", join=False)
        try:
            while True:
                done = context.join(POLL_S)
                quit = _quit(context.processes, folder)  # torch counts exit code 0 a success, record or not
                if quit is not None:
                    _stop(context.processes)
                    raise RankLost(quit, shards, 0)
                if done:
                    break
                if _failed(_records(folder, shards)):
                    _stop(context.processes)
                    break
        except (mp.ProcessExitedException, mp.ProcessRaisedException) as e:  # torch has stopped the others
            if not _failed(_records(folder, shards)):  # else a failed rank's record says why (cell_record)
                print(e, file=sys.stderr, flush=True)  # a crashed rank's traceback, kept as the evidence
                raise RankLost(e.error_index, shards, context.processes[e.error_index].exitcode) from None
        record = cell_record(_records(folder, shards))
    record["env"]["shards"] = shards
    return record


def cell_record(records: list[tuple[dict | None, int]]) -> dict:
    """The cell's record from its ranks' (in rank order, each with when it was written; None: the rank was stopped
    before it wrote one): rank 0's (the first rank's written where rank 0 was stopped), but with the status and
    error of the rank that failed first, named, where one did. The ranks failing after it (rank 0 with a lost
    connection to it, on gloo) fail because it stopped, which would hide the cause, and keep an out-of-memory from
    reading as one (no retry alone)."""
    written = [(when, rank, r) for rank, (r, when) in enumerate(records) if r is not None]
    if not written:
        raise RuntimeError(f"none of the {len(records)} ranks wrote a record")
    record = records[0][0] or min(written, key=lambda w: w[1])[2]
    # written at once: the ranks' clock ticks in jiffies, and a rank other than 0 is the likelier cause
    failed = sorted((when, rank == 0, rank) for when, rank, r in written if r["status"] != "ok")
    if not failed or failed[0][2] == 0:
        return record
    rank = failed[0][2]
    first = records[rank][0]
    error = first["error"]
    return finish(record, first["status"],
                  error and {**error, "message": f"rank {rank} of {len(records)}: {error['message']}"})


def _quit(processes: list, folder: str) -> int | None:
    """The first rank that exited with code 0 without writing a record (each writes its record before it exits)."""
    exited = [rank for rank, process in enumerate(processes) if process.exitcode == 0]  # before the records are read
    return next((rank for rank in exited if not _record_path(folder, rank).exists()), None)


def _stop(processes: list) -> None:
    """Stop the ranks still running, and wait for every rank."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()


def _failed(records: list[tuple[dict | None, int]]) -> bool:
    """Whether a rank's record says it failed."""
    return any(r["status"] != "ok" for r, _ in records if r is not None)


def _record_path(folder: str, rank: int) -> Path:
    return Path(folder) / f"record-{rank}.json"


def _records(folder: str, shards: int) -> list[tuple[dict | None, int]]:
    """Each rank's record and when it was written (ns), or (None, 0) where it has not written one."""
    found = []
    for rank in range(shards):
        path = _record_path(folder, rank)
        found.append((json.loads(path.read_text()), path.stat().st_mtime_ns) if path.exists() else (None, 0))
    return found


def _rank(rank: int, shards: int, port: int, cell, quiet: bool, checkpoint, folder: str, parent: int) -> None:
    die_with_parent(parent)  # the cell process (`parent`) killed with its runner: this rank too, even in a collective
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(shards))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=shards, timeout=COLLECTIVE_TIMEOUT)
    try:
        record = run_cell(cell, quiet or rank > 0, checkpoint if rank == 0 else None)
        # written before the group ends (ending it may wait on peers), atomically: run_ranks reads it meanwhile
        atomic_write(_record_path(folder, rank), json.dumps(record).encode())
    finally:
        dist.destroy_process_group()
