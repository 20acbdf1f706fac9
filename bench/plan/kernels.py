"""The `train.kernels` speed option, checked before any work: Liger's fused kernels (`kernels: liger`) exist for
LLaMA-family models only and need the liger-kernel package (Linux with CUDA: it is written in Triton), which the
lock does not hold, and a run whose cells have a GPU. Planning never imports it (nor torch): the package is looked
up, not loaded, and the GPUs are the executor's settings, not asked of CUDA."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

from bench.archs import ARCHS
from bench.env import installed_version
from bench.errors import BadInput
from bench.methods import declared
from bench.models import head_for

LIGER_ARCHS = ("llama",)  # the architectures (bench/archs.py) whose layers bench/cell/kernels.py patches
# The version bench/tools/liger_memory.py models (its line citations) and gpu_kit.sh carries to the GPU
LIGER_MODELLED = "0.8.5"
LIGER_INSTALL = (f"pip install liger-kernel=={LIGER_MODELLED} (a Linux machine with CUDA: it needs Triton); it is not "
                 "in the lock")


def check_kernels(cells: list, where: str | None, cells_on_gpu: Callable[[], bool] | None) -> None:
    """BadInput before any work when a cell asks for kernels its model cannot run or this machine lacks.
    `where`: the suite file, for the message; `cells_on_gpu`: whether the run's cells have a GPU (the executor's
    cells_on_gpu), asked only when a cell wants liger; None for an executor that cannot say (its cells then find
    out themselves, recorded failed with the reason)."""
    asked = [c for c in cells if c.train.kernels != "torch"]
    if not asked:
        return
    other = [c for c in asked if c.model.arch not in LIGER_ARCHS]
    if other:
        cell = other[0]
        raise BadInput(f"train.kernels: liger fuses the layers of LLaMA-family models only, and {cell.model.name} is "
                       f"{ARCHS[cell.model.arch].title} ({len(other)} cell(s), first: {cell.line()}); give those "
                       "cells kernels: torch", where, ("torch", *(f"liger (models of {a})" for a in LIGER_ARCHS)))
    head_only = [c for c in asked if not getattr(declared(c.method), "trains_below_head", True)
                 and head_for(c.model.kind, c.task.type) == "lm"]
    if head_only:  # liger-kernel 0.8.5 ops/fused_linear_cross_entropy.py:89,114-123: grad_weight needs grad_input
        cell = head_only[0]
        raise BadInput(f"train.kernels: {head_alone(cell.label)} ({len(head_only)} cell(s), first: {cell.line()}): "
                       "it would record no gradient; give those cells kernels: torch", where, ("torch",))
    if importlib.util.find_spec("liger_kernel") is None:
        raise BadInput(f"train.kernels: liger needs the liger-kernel package, which is not installed: {LIGER_INSTALL}",
                       where)
    installed = installed_version("liger-kernel")
    if installed != LIGER_MODELLED:  # its kernels run, but the memory the runner packs by is 0.8.5's
        print(f"note: liger-kernel {installed or '(version unknown)'} is installed; the memory prediction models "
              f"{LIGER_MODELLED} (bench/tools/liger_memory.py), so packing may misjudge liger cells: "
              f"{LIGER_INSTALL.split(' (')[0]}", file=sys.stderr)
    if cells_on_gpu is not None and not cells_on_gpu():
        raise BadInput(f"train.kernels: liger runs on CUDA GPUs only, and this run's cells have none ({len(asked)} "
                       f"cell(s) ask for it, first: {asked[0].line()}): give them GPUs (local: --gpus, or a visible "
                       "GPU; slurm, ray: --gpus-per-cell), or give those cells kernels: torch", where, ("torch",))


def head_alone(method: str) -> str:
    """Why liger cannot train a causal LM's head alone (check_kernels, and estimate --kernels liger)."""
    return (f"liger fuses a causal LM's head with its loss, which computes the head's gradient only when the layers "
            f"below it train, and {method} trains the LM head alone")
