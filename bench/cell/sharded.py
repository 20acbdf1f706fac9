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
which is how the tests run it. bench/cell/ranks.py starts the ranks; this module is what the recipe calls in each.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from bench.errors import Unsupported


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: the modules of the classes its transformers model declares it must not split
    (`_no_split_modules`, what accelerate and transformers' FSDP policies wrap), inside a method's wrappers too."""
    names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or [])}
    return [module for module in model.modules() if type(module).__name__ in names]


def in_rank() -> bool:
    """Whether this process is a rank of a sharded cell (it has a process group)."""
    return dist.is_available() and dist.is_initialized()


def refuse_unshardable(method_name: str) -> None:
    """Unsupported in a sharded cell's rank when FSDP2 cannot run the method named (Method.unshardable says why: QLoRA's
    4-bit weights lose their quantisation state; the Fisher-masked methods' gradient masks stay on the parameters
    fully_shard replaces, so every entry would train). The packer never shards such a cell (Packer.demand's
    `shardable`); this stops one sharded by hand before the model is even loaded."""
    from bench import methods

    method = methods.for_cell(method_name)
    if in_rank() and method.unshardable:
        raise Unsupported(f"{method.name} cannot run sharded: {method.unshardable}; run it whole on one GPU "
                          "(--gpus-per-cell 1)")


def shard(model: torch.nn.Module) -> None:
    """Shard `model` in place over the process group, when there is one (a sharded cell's rank): each block,
    then the model (its embeddings, head and what no block holds)."""
    if not in_rank():
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
