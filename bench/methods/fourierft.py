"""FourierFT: learn a few spectral coefficients of the weight update, inverse-DFT to the update (peft)."""

from __future__ import annotations

from bench.methods.base import Method, register
from bench.methods.lora import QV_TARGETS
from bench.methods.peft_common import peft_build

register(
    Method("fourierft", "reparameterized", "n trained Fourier coefficients per q/v matrix, update = scaling·IDFT",
           "Gao et al. 2024, Parameter-Efficient Fine-Tuning with Discrete Fourier Transform",
           peft_build("FourierFTConfig"), defaults={"n_frequency": 1000, "scaling": 150.0, "random_loc_seed": 777},
           targets=QV_TARGETS, train={"lr": 5e-2}, mergeable=True),
)
