"""Hybrids that combine several mechanisms (in-house; peft cannot gate or mix them).

- mam-adapter (He et al. 2022): prefix tuning on attention (30 vectors, MLP reparameterisation) plus a
  scaled parallel adapter on the FFN (bottleneck 512, s = 4), the paper's best "mix-and-match" setting.
- unipelt (Mao et al. 2022): LoRA on q and v, prefix tuning and a sequential adapter after the FFN,
  each scaled by its own learned gate σ(W·x): the model learns which mechanism to use where. The
  LoRA and adapter gates are per token; the prefix gate is per example (see attention_prefix), so
  no gate lets a decoder token read later tokens or lets padding change a prediction.
Prefix MLPs are folded away for storage.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.archs import ARCHS
from bench.methods import adapters, sites
from bench.methods.attention_prefix import add_prefix, prefixed
from bench.methods.base import Method, freeze, register, train_head


def _mam(model, config, ctx):
    freeze(model)
    arch = ctx.bundle.arch
    bank = add_prefix(model, arch, config["prefix_length"], config["prefix_mid_dim"])
    adapters.add_parallel(model, arch, {"bottleneck_dim": config["bottleneck_dim"], "reduction_factor": 1,
                                        "activation": "relu", "scaling": config["scaling"]}, "parallel_adapter")
    train_head(model, ctx)
    return prefixed(model, bank)


class GatedLoRA(nn.Module):
    """x -> g(x) · (alpha/r) · B·A·x, with g = σ(w·x + c) per token; B starts at zero."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float):
        super().__init__()
        self.a = nn.Linear(in_features, r, bias=False)
        self.b = nn.Linear(r, out_features, bias=False)
        nn.init.kaiming_uniform_(self.a.weight, a=5 ** 0.5)
        nn.init.zeros_(self.b.weight)
        self.scaling = alpha / r
        self.gate = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(x)) * self.b(self.a(x)) * self.scaling


def add_gated_lora(model, arch: str, r: int, alpha: float) -> None:
    targets = tuple("." + t for t in ARCHS[arch].q_v)
    found = [(n, m) for n, m in model.named_modules() if n.endswith(targets) and hasattr(m, "weight")]
    for _, module in found:
        sites.attach_beside(module, "gated_lora", GatedLoRA(sites.in_features(module), sites.out_features(module),
                                                            r, alpha))


def _unipelt(model, config, ctx):
    freeze(model)
    arch = ctx.bundle.arch
    add_gated_lora(model, arch, config["lora_r"], config["lora_alpha"])
    bank = add_prefix(model, arch, config["prefix_length"], config["prefix_mid_dim"], gated=True)
    adapters.add_sequential(model, arch, ["ffn_output"], {"reduction_factor": config["reduction_factor"],
                                                          "bottleneck_dim": 0, "activation": "relu"},
                            "gated_adapter", gated=True)
    train_head(model, ctx)
    return prefixed(model, bank)


register(
    Method("mam-adapter", "hybrid", "prefix tuning on attention + scaled parallel adapter on the FFN",
           "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning", _mam,
           defaults={"prefix_length": 30, "prefix_mid_dim": 800, "bottleneck_dim": 512, "scaling": 4.0},
           train={"lr": 5e-4}),
    Method("unipelt", "hybrid", "gated LoRA (q, v) + gated prefix + gated sequential adapter (FFN)",
           "Mao et al. 2022, UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning", _unipelt,
           defaults={"lora_r": 8, "lora_alpha": 16, "prefix_length": 10, "prefix_mid_dim": 512,
                     "reduction_factor": 16}, train={"lr": 5e-4}),
)
