"""Per-device memory of a cell sharded over several GPUs with FSDP2 (`torch.distributed.fsdp.fully_shard` on each
block of the model's layer stacks, then on the model): `peft-bench estimate --shards N`.

As the runner shards a cell (bench/cell/sharded.py), each of the N devices runs the same, whole batch (`--batch-size`
is the cell's batch, which every device holds; not data parallel) and holds 1/N of every parameter, gradient and
optimizer state; a block's parameters are gathered whole just before its forward and its backward, and its
gradients reduced and scattered right after its backward. So, per device:

- weights_bytes, grad_bytes, optimizer_bytes: the unsharded figures / N, rounded up (the shards of an uneven
  tensor are padded to equal size; the padding, under N elements a tensor, is left out);
- gathered_bytes: the largest block's parameters twice (the block that computes and the next one, prefetched) and
  its trainable parameters' gradients once (whole until they are reduced and scattered);
- step_peak_bytes: the batch, the busier of the backward and the optimizer update, and gathered_bytes. The
  update runs on the shards: (gradients + its temporaries) / N. The most bytes alive at once in the passes is
  the unsharded one's with its gradients sharded; which gradients are alive at that moment the fake step does not
  say, so it is taken as all of them, but never below the saved activations (alive at the end of the forward,
  with no gradient yet). Where fewer gradients are alive at the peak, the figure is low by up to (1 - 1/N) of
  those not alive: next to nothing for LoRA and other small adapters, up to grad_bytes x (1 - 1/N) for full
  fine-tuning; an estimate, not a bound;
- eval_peak_bytes: the unsharded one and the largest block's parameters twice (an evaluation batch's forward
  gathers blocks as training's does, and makes no gradient); null where the unsharded one is;
- predicted_peak_bytes: of these per-device parts, as unsharded (bench/cell/measure.py: the larger of training's
  and evaluation's).

Not counted: NCCL's own buffers (a few hundred MiB per device), the CUDA context, and the allocator's
fragmentation under FSDP's varying block sizes. The figures come from the same fake-tensor step the unsharded
prediction uses (bench/tools/fake_pass.py), which the GPU checks measured within a few % on one device; the
sharded figures have not been measured on several GPUs.
"""

from __future__ import annotations

import math

import torch

from bench.cell.measure import predicted_peak
from bench.tensors import unique_tensors


def largest_block(model: torch.nn.Module, stacks: list) -> tuple[int, int]:
    """(parameter bytes, trainable parameter bytes) of the largest block of the model's layer stacks (`stacks`:
    bench.tools.fake_pass.block_stacks); the whole model's when it has no stack (FSDP then gathers it whole)."""
    blocks = [block for _, _, stack in stacks for block in stack] or [model]

    def sizes(block: torch.nn.Module) -> tuple[int, int]:
        params = unique_tensors(block.parameters())
        return sum(p.nbytes for p in params), sum(p.nbytes for p in params if p.requires_grad)

    return max((sizes(block) for block in blocks), key=lambda s: s[0])


def sharded_memory(memory: dict, shards: int, block: tuple[int, int], batch_bytes: int, live_peak: int,
                   update_bytes: int, trains: bool = True, evaluates: bool = True) -> dict:
    """The memory section of one of `shards` devices (see the module's docstring), from the unsharded one and its
    step's parts: `block`, largest_block's; `batch_bytes`, `live_peak` (the most bytes alive at once in the
    passes) and `update_bytes` (the optimizer update's temporaries), unsharded (bench/cell/probe.py); `trains`,
    `evaluates`: the phases the cell runs (predicted_peak's)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    per_device = {key: math.ceil(memory[key] / shards) for key in ("weights_bytes", "trainable_bytes",
                                                                    "grad_bytes", "optimizer_bytes")}
    block_bytes, block_trainable_bytes = block
    gathered = 2 * block_bytes + block_trainable_bytes if shards > 1 else 0
    sharded_away = memory["grad_bytes"] - per_device["grad_bytes"]
    passes = max(memory["activation_bytes"], live_peak - sharded_away)
    update = per_device["grad_bytes"] + math.ceil(update_bytes / shards)
    step_peak = batch_bytes + max(passes, update) + gathered
    evaluation = memory.get("eval_peak_bytes")
    sharded = {**memory, **per_device, "shards": shards, "gathered_bytes": gathered, "step_peak_bytes": step_peak,
               "eval_peak_bytes": None if evaluation is None else evaluation + 2 * block_bytes * (shards > 1)}
    return {**sharded, "predicted_peak_bytes": predicted_peak(sharded, trains, evaluates)}
