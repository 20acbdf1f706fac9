"""The `train.kernels` speed option, checked before any work: Liger's fused kernels (`kernels: liger`) exist for
LLaMA-family models only and need the liger-kernel package (Linux with CUDA: it is written in Triton), which the
lock does not hold. Planning never imports it (nor torch): the package is looked up, not loaded."""

from __future__ import annotations

import importlib.util

from bench.archs import ARCHS
from bench.errors import BadInput

LIGER_ARCHS = ("llama",)  # the architectures (bench/archs.py) whose layers bench/cell/kernels.py patches
LIGER_INSTALL = "pip install liger-kernel (a Linux machine with CUDA: it needs Triton); it is not in the lock"


def check_kernels(cells: list, where: str | None) -> None:
    """BadInput before any work when a cell asks for kernels its model cannot run or this machine lacks.
    `where`: the suite file, for the message."""
    asked = [c for c in cells if c.train.kernels != "torch"]
    if not asked:
        return
    other = [c for c in asked if c.model.arch not in LIGER_ARCHS]
    if other:
        cell = other[0]
        raise BadInput(f"train.kernels: liger fuses the layers of LLaMA-family models only, and {cell.model.name} is "
                       f"{ARCHS[cell.model.arch].title} ({len(other)} cell(s), first: {cell.line()}); give those "
                       "cells kernels: torch", where, ("torch", *(f"liger (models of {a})" for a in LIGER_ARCHS)))
    if importlib.util.find_spec("liger_kernel") is None:
        raise BadInput(f"train.kernels: liger needs the liger-kernel package, which is not installed: {LIGER_INSTALL}",
                       where)
