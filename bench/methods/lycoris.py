"""LyCORIS-style low-rank updates with more expressive products (peft)."""

from __future__ import annotations

from bench.archs import unsupported_on_conv1d
from bench.methods.base import Method, register
from bench.methods.lora import QV_TARGETS
from bench.methods.peft_common import peft_build

_CONV1D = "peft's {} adapts nn.Linear and convolutions, not {{arch}}'s Conv1D layers"

register(
    Method("loha", "reparameterized", "low-rank Hadamard product update (B1·A1) ⊙ (B2·A2) on q and v",
           "Hyeon-Woo et al. 2022, FedPara (LoHa)", peft_build("LoHaConfig"),
           defaults={"r": 8, "alpha": 8, "rank_dropout": 0.0, "module_dropout": 0.0}, targets=QV_TARGETS,
           train={"lr": 5e-4}, mergeable=True,
           unsupported=unsupported_on_conv1d(_CONV1D.format("LoHa"))),
    Method("lokr", "reparameterized", "Kronecker-product update C ⊗ (B·A) on q and v",
           "Yeh et al. 2024, Navigating Text-To-Image Customization (LoKr)", peft_build("LoKrConfig"),
           defaults={"r": 8, "alpha": 8, "rank_dropout": 0.0, "module_dropout": 0.0}, targets=QV_TARGETS,
           train={"lr": 5e-4}, mergeable=True,
           unsupported=unsupported_on_conv1d(_CONV1D.format("LoKr"))),
)
