"""Orthogonal fine-tuning: rotate the frozen weight by a learned (block-)orthogonal matrix (peft)."""

from __future__ import annotations

from bench.archs import unsupported_on_conv1d
from bench.methods.base import Method, register
from bench.methods.lora import QV_TARGETS
from bench.methods.peft_common import peft_build

_CONV1D = "peft's {} rotates nn.Linear weights; {{arch}}'s Conv1D layers are not supported"

register(
    Method("oft", "reparameterized", "block-diagonal orthogonal rotation (Cayley) of q and v weights",
           "Qiu et al. 2023, Controlling Text-to-Image Diffusion by Orthogonal Finetuning", peft_build("OFTConfig"),
           defaults={"oft_block_size": 32, "r": 0, "module_dropout": 0.0, "coft": False, "block_share": False},
           targets=QV_TARGETS, train={"lr": 1e-3}, mergeable=True, unsupported=unsupported_on_conv1d(_CONV1D.format("OFT"))),
    Method("boft", "reparameterized", "butterfly-factorised orthogonal rotation of q and v weights",
           "Liu et al. 2024, Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization",
           peft_build("BOFTConfig"),
           defaults={"boft_block_size": 4, "boft_block_num": 0, "boft_n_butterfly_factor": 1, "boft_dropout": 0.0},
           targets=QV_TARGETS, train={"lr": 1e-3}, mergeable=True, unsupported=unsupported_on_conv1d(_CONV1D.format("BOFT"))),
)
