"""A sharded cell's ranks (bench/cell/sharded.py says how a sharded cell runs): started by the cell's process, one
per device, torchrun-style, each running the recipe; rank 0's record is the cell's, `oom` where any rank's is
(cell_record)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from bench.cell.recipe import run_cell
from bench.record import finish


def run_ranks(cell, quiet: bool, checkpoint, shards: int) -> dict:
    """Run the cell on `shards` ranks, one process each (this process waits for them all), and return its record
    (cell_record) with `env.shards`. A rank that crashes ends the group, and this process with it (the executor's
    failure record keeps the output). `checkpoint`: as run_cell takes it, but picklable (a functools.partial of a
    module's function): rank 0 calls it."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on this host for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="peft-bench-ranks-") as folder:
        # files, not pipes: a large record never blocks a rank while we join
        mp.start_processes(_rank, args=(shards, port, cell, quiet, checkpoint, folder), nprocs=shards,
                           start_method="spawn")
        record = cell_record([json.loads(_record_path(folder, rank).read_text()) for rank in range(shards)])
    record["env"]["shards"] = shards
    return record


def cell_record(records: list[dict]) -> dict:
    """The cell's record from its ranks' (in rank order): rank 0's, but where a rank ran out of memory, the cell did
    (status `oom`, that rank's error, named), whatever rank 0 ended with: the ranks it waited on having stopped,
    rank 0 ends `failed` with a lost connection, which would hide the cause and keep an out-of-memory from reading
    as one."""
    record = records[0]
    rank = next((i for i, r in enumerate(records) if r["status"] == "oom"), 0)
    if rank == 0:
        return record
    error = records[rank]["error"]
    return finish(record, "oom", {**error, "message": f"rank {rank} of {len(records)}: {error['message']}"})


def _record_path(folder: str, rank: int) -> Path:
    return Path(folder) / f"record-{rank}.json"


def _rank(rank: int, shards: int, port: int, cell, quiet: bool, checkpoint, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(shards))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=shards)
    try:
        record = run_cell(cell, quiet or rank > 0, checkpoint if rank == 0 else None)
    finally:
        dist.destroy_process_group()
    _record_path(folder, rank).write_text(json.dumps(record))
