"""Polytropon (Poly; Ponti et al. 2023): an inventory of LoRA "skills" shared by every task, and per task a
learned routing over them (peft's PolyConfig, which is the reference: nothing here reimplements it).

Each adapted projection holds `n_skills` LoRA modules (rank `r`, in `n_splits` blocks); task t's update is the
mixture of the skills weighted by its router row (a sigmoid-relaxed Bernoulli draw in training, its sigmoid at
evaluation, normalised over the skills). The router has one row per task of the cell: the tasks of a multi-task
cell's mixture (bench/plan/mixtures.py), one on a single-task cell. Each row's task reaches the router through
bench/layers/task_heads.select: a pre-hook on every Poly layer hands peft the rows' `task_ids`.

Trainable per adapted d_in × d_out projection: n_skills · r · (d_in + d_out) + n_tasks · n_splits · n_skills.
Its authors' code (microsoft/mttl, configs/t0/poly_lora.json) trains the skills at 1e-3 and the router's logits at
0.1, Ponti et al.'s "two-speed learning rate"; a cell has one rate for every parameter, so the router trains at the
skills' rate here (multitask-glue: 1e-3).
The dry-run prices it whole on its fake pass (bench/tools/estimate.py), built with the cell's task as the cell
builds it (bench/tools/priced_task.py: the router a row per task of the mixture, each batch row one task's): per
row, the skills mixed by the router's weights, 2 · n_skills · r · (d_in + d_out) FLOPs forward, beside the LoRA
products of every token; the router's own work is elementwise (0 counted FLOPs).
"""

from __future__ import annotations

from bench.methods.base import Method, register
from bench.methods.lora import QV_TARGETS
from bench.methods.peft_common import peft_build


def _with_tasks(config: dict, ctx) -> dict:
    """peft's settings: ours, and the router's tasks, those of the cell's mixture (one without)."""
    task = getattr(ctx, "task", None)
    return {**config, "n_tasks": len(task.members) if task is not None and task.members else 1}


def _route(wrapped):
    """Give every Poly layer the rows' task ids from its `task_rows` (task 0 until a mixture's cell sets it)."""
    import torch
    from peft.tuners.poly.layer import Linear

    from bench.tensors import with_values

    def task_ids(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        rows = module.task_rows
        if not isinstance(rows, int) and rows.shape[0] != x.shape[0]:
            raise ValueError(f"poly: {rows.shape[0]} task ids for {x.shape[0]} rows (an objective that repeats rows "
                             "per answer option cannot route them)")
        # peft's router reads the ids' values (its check that each is below n_tasks): on the dry-run's fake pass
        # they are handed over with their values, so the router runs there whole, its check included
        ids = with_values(lambda device: torch.full((x.shape[0],), rows, dtype=torch.long, device=device)
                          if isinstance(rows, int) else rows.to(device), x)
        return args, {**kwargs, "task_ids": ids}

    for module in wrapped.modules():
        if isinstance(module, Linear):
            module.task_rows = 0
            module.register_forward_pre_hook(task_ids, with_kwargs=True)


def _poly(model, config, ctx):
    adapted = peft_build("PolyConfig", translate=_with_tasks)(model, config, ctx)
    _route(adapted.model)
    adapted.merge = None  # the update depends on each row's task: there is no one weight to fold it into
    return adapted


register(Method(
    "poly", "reparameterized", "Polytropon: LoRA skills shared by every task, mixed per task by a learned router "
    "(q, v)", "Ponti et al. 2023, Combining Parameter-Efficient Modules for Task-Level Generalisation", _poly,
    defaults={"r": 8, "n_skills": 4, "n_splits": 1}, targets=QV_TARGETS, train={"lr": 5e-4},
    unsupported={"gpt2": "peft's Poly adapts torch.nn.Linear only; GPT-2's attention is a Conv1D"}))
