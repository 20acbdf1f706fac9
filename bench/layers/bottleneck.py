"""The bottleneck adapter module (d -> b -> d) and where the adapter methods put it (bench/methods/adapters.py)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from bench.layers import sites

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh,
               "gelu_new": functools.partial(nn.GELU, approximate="tanh")}  # transformers' gelu_new


class Bottleneck(nn.Module):
    """x -> scaling · up(act(down(x))), optionally times a learned gate σ(w·x + c) per token.

    The up projection starts at zero (the adapted model starts as the base model); the down projection keeps
    nn.Linear's init, its bias too unless `zero_down_bias` (AdapterHub's "mam_adapter" and "bert" inits, which
    the parallel adapter's, MAM's and UniPELT's references use, zero it)."""

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", scaling: float = 1.0,
                 gated: bool = False, zero_down_bias: bool = False):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        if zero_down_bias:
            nn.init.zeros_(self.down.bias)
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


def add_sequential(model, arch: str, positions: list[str], config: dict, name: str, gated: bool = False,
                   zero_down_bias: bool = False) -> None:
    """After the output projection of each of `positions` (before dropout, residual and norm: Houlsby et al.)."""
    sites.attach_sequential(model, arch, positions, name, lambda dim: Bottleneck(
        dim, bottleneck_width(dim, config), config["activation"], gated=gated, zero_down_bias=zero_down_bias))


def add_after_ffn_block(model, arch: str, config: dict, name: str, gated: bool = False,
                        zero_down_bias: bool = False) -> None:
    """After each FFN block's residual add (and post-LN its layer norm, applied again to the sum): AdapterHub's
    SeqBnConfig, Pfeiffer et al.'s adapter (bench/layers/sites.attach_after_ffn_block)."""
    sites.attach_after_ffn_block(model, arch, name, lambda dim: Bottleneck(
        dim, bottleneck_width(dim, config), config["activation"], gated=gated, zero_down_bias=zero_down_bias))


def add_parallel(model, arch: str, config: dict, name: str, zero_down_bias: bool = False) -> None:
    sites.attach_parallel(model, arch, name, lambda dim: Bottleneck(
        dim, bottleneck_width(dim, config), config["activation"], scaling=config["scaling"],
        zero_down_bias=zero_down_bias))


def train_norms(model, ctx) -> None:
    """Unfreeze every normalisation layer of the model body (LayerNorm, T5's and LLaMA's RMSNorm)."""
    heads = tuple(ctx.bundle.head_modules)
    for name, module in model.named_modules():
        if "norm" in type(module).__name__.lower() and not name.startswith(heads):
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
