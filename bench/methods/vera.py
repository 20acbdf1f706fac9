"""VeRA: frozen random low-rank matrices shared by all layers, scaled by trained vectors (peft)."""

from __future__ import annotations

from bench.methods.base import Method, register
from bench.methods.lora import QV_TARGETS
from bench.methods.peft_common import peft_build

register(
    Method("vera", "reparameterized", "shared frozen random A, B; only scaling vectors λ_d, λ_b train (q, v)",
           "Kopiczko et al. 2024, VeRA: Vector-based Random Matrix Adaptation",
           peft_build("VeraConfig", fixed={"save_projection": True}),
           defaults={"r": 256, "vera_dropout": 0.0, "d_initial": 0.1, "projection_prng_key": 0},
           targets=QV_TARGETS, train={"lr": 4e-3}, mergeable=True),
)
