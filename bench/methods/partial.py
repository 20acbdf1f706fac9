"""Partial fine-tuning: train a chosen subset of the existing parameters."""

from __future__ import annotations

from bench.archs import targets
from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, freeze, register, train_head
from bench.methods.peft_common import peft_build

# Every normalisation layer: embeddings, attention and FFN sublayers, final norms (bench/archs.py).
NORM_TARGETS = targets(lambda arch: {"target_modules": arch.norms})


def _bitfit(model, config, ctx):
    freeze(model)
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise Unsupported(f"BitFit trains bias terms and {ctx.bundle.arch} has none")
    for p in biases:
        p.requires_grad_(True)
    train_head(model, ctx)
    return Adapted(model)


register(
    Method("bitfit", "partial", "bias terms only (all of them, LayerNorm biases included)",
           "Ben Zaken et al. 2022, BitFit", _bitfit, train={"lr": 1e-3}),
    Method("ln-tuning", "partial", "LayerNorm (RMSNorm) gains and biases only",
           "Zhao et al. 2024, Tuning LayerNorm in Attention", peft_build("LNTuningConfig"),
           targets=NORM_TARGETS, train={"lr": 1e-3}),
)
