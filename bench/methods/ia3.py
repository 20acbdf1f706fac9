"""(IA)³: learned vectors that rescale keys, values and the FFN's intermediate activations (peft)."""

from __future__ import annotations

from bench.archs import targets
from bench.methods.base import Method, register
from bench.methods.peft_common import peft_build

IA3_TARGETS = targets(lambda arch: arch.ia3)  # keys, values, FFN activations: bench/archs.py

register(
    Method("ia3", "additive", "(IA)³: learned rescaling of keys, values and FFN intermediate activations",
           "Liu et al. 2022, T-Few", peft_build("IA3Config"), targets=IA3_TARGETS,
           train={"lr": 3e-3}, mergeable=True),
)
