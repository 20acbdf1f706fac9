"""Partial fine-tuning: train a chosen subset of the existing parameters."""

from __future__ import annotations

from bench.archs import ARCHS, targets
from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, freeze, register, train_head
from bench.methods.peft_common import peft_build

# Every normalisation layer: embeddings, attention and FFN sublayers, final norms (bench/archs.py).
NORM_TARGETS = targets(lambda arch: {"target_modules": arch.norms})


# Architectures whose projections have no bias get zero ones to train (T-Few's BitFit on T0); the others
# resolve without the key, so their cells keep their ids.
BIAS_FREE = {name: {"add_biases_to": list(arch.bias_free)} for name, arch in ARCHS.items() if arch.bias_free}


def _bitfit(model, config, ctx):
    freeze(model)
    _add_zero_biases(model, set(config.get("add_biases_to") or ()))
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise Unsupported(f"BitFit trains bias terms and {ctx.bundle.arch} has none")
    for p in biases:
        p.requires_grad_(True)
    train_head(model, ctx)
    return Adapted(model)


def _add_zero_biases(model, names: set[str]) -> None:
    """A zero bias on every bias-free nn.Linear named in `names`: the model computes exactly what it did
    until the biases train."""
    import torch
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.bias is None and name.rsplit(".", 1)[-1] in names:
            w = module.weight
            module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=w.dtype, device=w.device))


register(
    Method("bitfit", "partial", "bias terms only (all of them, LayerNorm biases included); where the attention and "
           "FFN projections have none (T5, LLaMA), zero biases are added to train (T-Few)",
           "Ben Zaken et al. 2022, BitFit", _bitfit, arch_defaults=BIAS_FREE, train={"lr": 1e-3}),
    Method("ln-tuning", "partial", "LayerNorm (RMSNorm) gains and biases only",
           "Zhao et al. 2024, Tuning LayerNorm in Attention", peft_build("LNTuningConfig"),
           targets=NORM_TARGETS, train={"lr": 1e-3}),
)
