"""A cell sharded over several GPUs with FSDP2 (`run --gpus ... --gpus-per-cell G`, for a cell larger than any
one GPU): its process starts one rank per device, torchrun-style, and each rank runs the same recipe
(bench/cell/recipe.py) on the same batches, its model sharded by `torch.distributed.fsdp.fully_shard` (each
transformer block, then the model) once the method has adapted it. Every rank computes the gradients of the same
batch, so the step equals the unsharded one up to float rounding; what sharding changes is that each device holds
1/G of the parameters, gradients and optimizer states (bench/tools/sharding.py predicts it).

The record is rank 0's: its scores, parameter counts (a sharded parameter counts whole) and its device's memory
figures, which are per device; `env.shards` says over how many devices it ran. The merged model's inference
speed (time.infer_*_merged) stays null: FSDP refuses the copy of the model a merge is made in. On CUDA the
ranks talk through NCCL, each on its own device (torch.cuda.set_device); without CUDA through gloo on the CPU,
which is how the tests run it.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: the modules of the classes its transformers model declares it must not split
    (`_no_split_modules`, what accelerate and transformers' FSDP policies wrap), inside a method's wrappers too."""
    names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or [])}
    return [module for module in model.modules() if type(module).__name__ in names]


def shard(model: torch.nn.Module) -> None:
    """Shard `model` in place over the process group, when there is one (a sharded cell's rank): each block,
    then the model (its embeddings, head and what no block holds)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    from torch.distributed.fsdp import fully_shard

    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)


def sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are sharded (a rank of a sharded cell)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def whole(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A value computed over sharded tensors (a DTensor, e.g. the gradient norm) as the whole tensor."""
    if tensor is None or type(tensor) in (torch.Tensor, torch.nn.Parameter):  # unsharded: no import in a step
        return tensor
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def run_ranks(cell, quiet: bool, checkpoint, shards: int) -> dict:
    """Run the cell on `shards` ranks, one process each (this process waits for them), and return rank 0's record
    with `env.shards`. A rank that fails ends the others (the process group's error) and rank 0's record says why.
    `checkpoint`: as run_cell takes it, but picklable (a functools.partial of a module's function): rank 0 calls
    it."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on this host for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_rank, args=(shards, port, cell, quiet, checkpoint, queue), nprocs=shards,
                       start_method="spawn")
    record = queue.get()
    record["env"]["shards"] = shards
    return record


def _rank(rank: int, shards: int, port: int, cell, quiet: bool, checkpoint, queue) -> None:
    from bench.cell.recipe import run_cell

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
        queue.put(record)
