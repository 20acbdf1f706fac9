"""Bottleneck adapters (in-house: AdapterHub cannot be installed beside transformers 5).

A bottleneck maps width d -> b -> d (down, non-linearity, up). Its up projection starts at zero, so
an adapted model starts out computing exactly what the pretrained model computes.
- adapter-houlsby: sequential, after the attention output projection and after the FFN output
  projection of every layer, and the layer norms train too (Houlsby et al. 2019); swish, reduction
  factor 16 (AdapterHub's defaults).
- adapter-pfeiffer: sequential, after the FFN output projection only (Pfeiffer et al. 2021), ReLU, 16.
- adapter-parallel: from the FFN block's input, added to its output, scaled (He et al. 2022).
Sequential adapters sit before dropout, residual and layer norm, as in Houlsby et al.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.methods import sites
from bench.methods.base import Adapted, Method, freeze, register, train_head

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """x -> scaling · up(act(down(x))), optionally times a learned gate σ(w·x + c) per token."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", scaling: float = 1.0,
                 gated: bool = False):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = scaling
        self.gate = nn.Linear(dim, 1) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.up(self.act(self.down(x))) * self.scaling
        if self.gate is not None:
            delta = delta * torch.sigmoid(self.gate(x))
        return delta


def bottleneck_width(dim: int, config: dict) -> int:
    return config["bottleneck_dim"] or max(1, dim // config["reduction_factor"])


def add_sequential(model, arch: str, positions: list[str], config: dict, name: str, gated: bool = False) -> None:
    sites.attach_sequential(model, arch, positions, name, lambda dim: Bottleneck(
        dim, bottleneck_width(dim, config), config["activation"], gated=gated))


def train_norms(model, ctx) -> None:
    """Unfreeze every normalisation layer of the model body (LayerNorm, T5's and LLaMA's RMSNorm)."""
    heads = tuple(ctx.bundle.head_modules)
    for name, module in model.named_modules():
        if "norm" in type(module).__name__.lower() and not name.startswith(heads):
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)


def _sequential(positions: list[str]):
    def build(model, config, ctx):
        freeze(model)
        add_sequential(model, ctx.bundle.arch, positions, config, "adapter")
        if config.get("train_layer_norm"):
            train_norms(model, ctx)
        train_head(model, ctx)
        return Adapted(model)

    return build


def add_parallel(model, arch: str, config: dict, name: str) -> None:
    sites.attach_parallel(model, arch, name, lambda dim: Bottleneck(
        dim, bottleneck_width(dim, config), config["activation"], scaling=config["scaling"]))


def _parallel(model, config, ctx):
    freeze(model)
    add_parallel(model, ctx.bundle.arch, config, "parallel_adapter")
    train_head(model, ctx)
    return Adapted(model)


_BOTTLENECK_DEFAULTS = {"reduction_factor": 16, "bottleneck_dim": 0}  # bottleneck_dim > 0 overrides the factor

register(
    Method("adapter-houlsby", "additive", "sequential bottleneck adapters after attention and after the FFN, "
           "plus the layer norms", "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP",
           _sequential(["attention_output", "ffn_output"]),
           defaults={**_BOTTLENECK_DEFAULTS, "activation": "swish", "train_layer_norm": True}, train={"lr": 1e-3}),
    Method("adapter-pfeiffer", "additive", "sequential bottleneck adapter after the FFN only",
           "Pfeiffer et al. 2021, AdapterFusion", _sequential(["ffn_output"]),
           defaults={**_BOTTLENECK_DEFAULTS, "activation": "relu"}, train={"lr": 1e-3}),
    Method("adapter-parallel", "additive", "parallel bottleneck adapter on the FFN, output scaled by s",
           "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning", _parallel,
           defaults={**_BOTTLENECK_DEFAULTS, "activation": "relu", "scaling": 4.0},
           train={"lr": 1e-3}),
)
