"""A sharded cell's ranks (bench/cell/sharded.py says how a sharded cell runs): started by the cell's process, one
per device, torchrun-style, each running the recipe; rank 0's record is the cell's."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from bench.cell.recipe import run_cell


def run_ranks(cell, quiet: bool, checkpoint, shards: int) -> dict:
    """Run the cell on `shards` ranks, one process each (this process waits for them all), and return rank 0's
    record with `env.shards`. A rank that fails ends the group, and this process with it (the executor's failure
    record keeps the output). `checkpoint`: as run_cell takes it, but picklable (a functools.partial of a module's
    function): rank 0 calls it."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on this host for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="peft-bench-ranks-") as folder:
        out = Path(folder) / "record.json"  # a file, not a pipe: a large record never blocks rank 0 while we join
        mp.start_processes(_rank, args=(shards, port, cell, quiet, checkpoint, str(out)), nprocs=shards,
                           start_method="spawn")
        record = json.loads(out.read_text())
    record["env"]["shards"] = shards
    return record


def _rank(rank: int, shards: int, port: int, cell, quiet: bool, checkpoint, out: str) -> None:
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
    if rank == 0:
        Path(out).write_text(json.dumps(record))
