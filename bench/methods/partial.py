"""Partial fine-tuning: train a chosen subset of the existing parameters."""

from __future__ import annotations

from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, freeze, register, train_head
from bench.methods.peft_common import peft_build

# Every normalisation layer: embeddings, attention and FFN sublayers, final norms.
NORM_TARGETS = {
    "roberta": {"target_modules": ["LayerNorm"]},
    "bert": {"target_modules": ["LayerNorm"]},
    "t5": {"target_modules": ["layer_norm", "final_layer_norm"]},
    "gpt2": {"target_modules": ["ln_1", "ln_2", "ln_f"]},
    "llama": {"target_modules": ["input_layernorm", "post_attention_layernorm", "norm"]},
}


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
