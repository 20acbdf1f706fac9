"""PHM (Kronecker-sum) layers of the Compacter methods (bench/methods/compacter.py; the recipes are described there)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bench.layers.bottleneck import ACTIVATIONS


class PHMRule(nn.Module):
    """The n matrices Aᵢ (n×n each) of a PHM layer: [n, n, n]."""

    def __init__(self, n: int):
        super().__init__()
        self.a = nn.Parameter(torch.randn(n, n, n) / math.sqrt(n))


class PHMLinear(nn.Module):
    """y = x·W + b with W = Σᵢ Aᵢ ⊗ sᵢtᵢᵀ. A `shared` rule is registered once, on the model; otherwise
    the layer owns its rule."""

    def __init__(self, in_features: int, out_features: int, rule: PHMRule, rank: int, zero: bool = False,
                 shared: bool = True):
        super().__init__()
        n = rule.a.shape[0]
        if in_features % n or out_features % n:
            raise ValueError(f"PHM layer {in_features}->{out_features} needs sizes divisible by n={n}")
        self.s = nn.Parameter(torch.randn(n, in_features // n, rank) * math.sqrt(2.0 / (in_features // n + rank)))
        self.t = nn.Parameter(torch.zeros(n, rank, out_features // n) if zero else
                              torch.randn(n, rank, out_features // n) * math.sqrt(2.0 / (rank + out_features // n)))
        self.bias = nn.Parameter(torch.zeros(out_features))
        if shared:
            object.__setattr__(self, "rule", rule)
        else:
            self.rule = rule

    def weight(self) -> torch.Tensor:
        b = self.s @ self.t  # [n, in/n, out/n]
        return torch.einsum("nij,nkl->ikjl", self.rule.a, b).reshape(
            self.rule.a.shape[1] * b.shape[1], self.rule.a.shape[2] * b.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


class CompacterAdapter(nn.Module):
    """x -> up(act(down(x))) with PHM projections."""

    def __init__(self, down: PHMLinear, up: PHMLinear, activation: str):
        super().__init__()
        self.down, self.act, self.up = down, ACTIVATIONS[activation](), up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def tfew_phm(in_features: int, out_features: int, config: dict) -> PHMLinear:
    """A PHM layer with its own rule, initialised as T-Few's PHMLinear (c_init normal, w_init glorot-uniform): the
    rule from N(0, phm_init_range²), which T-Few's reset_parameters fixes at 0.02 for an unfactorised rule."""
    layer = PHMLinear(in_features, out_features, PHMRule(config["phm_dim"]), config["phm_rank"], shared=False)
    with torch.no_grad():
        nn.init.normal_(layer.rule.a, std=config["phm_init_range"])
        for i in range(layer.s.shape[0]):
            nn.init.xavier_uniform_(layer.s[i], gain=math.sqrt(2))
            nn.init.xavier_uniform_(layer.t[i], gain=math.sqrt(2))
    return layer
