"""Partial fine-tuning: train a chosen subset of the existing parameters."""

from __future__ import annotations

from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, freeze, train_head


def _bitfit(model, config, ctx):
    freeze(model)
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise Unsupported(f"BitFit trains bias terms and {ctx.bundle.arch} has none")
    for p in biases:
        p.requires_grad_(True)
    train_head(model, ctx)
    return Adapted(model)


METHODS = [
    Method("bitfit", "partial", "bias terms only (all of them, LayerNorm biases included)",
           "Ben Zaken et al. 2022, BitFit", _bitfit, train={"lr": 1e-3}),
]
