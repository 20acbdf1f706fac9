"""Compacter: adapters whose projections are sums of Kronecker products (in-house).

A PHM layer (parameterised hypercomplex multiplication) builds its weight as W = Σᵢ Aᵢ ⊗ Bᵢ with
i = 1..n. The n×n matrices Aᵢ are shared by every Compacter layer of the model ("shared factors");
each Bᵢ is low rank, Bᵢ = sᵢ tᵢᵀ, so a d→k layer costs d + k parameters plus its bias. Adapters sit
where Houlsby's do (after attention and after the FFN), GELU in between, reduction factor 32, n = 4
(Karimi Mahabadi et al. 2021). The bottleneck width is rounded up to a multiple of n.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bench.methods import sites
from bench.methods.base import Adapted, Method, freeze, register, train_head


class SharedFactors(nn.Module):
    """The Aᵢ shared by all PHM layers: [n, n, n]."""

    def __init__(self, n: int):
        super().__init__()
        self.a = nn.Parameter(torch.randn(n, n, n) / math.sqrt(n))


class PHMLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, factors: SharedFactors, rank: int, zero: bool = False):
        super().__init__()
        n = factors.a.shape[0]
        if in_features % n or out_features % n:
            raise ValueError(f"PHM layer {in_features}->{out_features} needs sizes divisible by n={n}")
        self.s = nn.Parameter(torch.randn(n, in_features // n, rank) * math.sqrt(2.0 / (in_features // n + rank)))
        self.t = nn.Parameter(torch.zeros(n, rank, out_features // n) if zero else
                              torch.randn(n, rank, out_features // n) * math.sqrt(2.0 / (rank + out_features // n)))
        self.bias = nn.Parameter(torch.zeros(out_features))
        object.__setattr__(self, "factors", factors)  # shared: registered once, on the model

    def weight(self) -> torch.Tensor:
        b = self.s @ self.t  # [n, in/n, out/n]
        return torch.einsum("nij,nkl->ikjl", self.factors.a, b).reshape(
            self.factors.a.shape[1] * b.shape[1], self.factors.a.shape[2] * b.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


class CompacterAdapter(nn.Module):
    """x -> up(gelu(down(x))) with PHM projections; up starts at zero, so the model starts unchanged."""

    def __init__(self, dim: int, width: int, factors: SharedFactors, rank: int):
        super().__init__()
        self.down = PHMLinear(dim, width, factors, rank)
        self.up = PHMLinear(width, dim, factors, rank, zero=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(x)))


def width_for(dim: int, config: dict) -> int:
    n = config["phm_dim"]
    return n * max(1, math.ceil(dim / config["reduction_factor"] / n))


def _compacter(model, config, ctx):
    freeze(model)
    arch = ctx.bundle.arch
    first = sites.find(model, arch, "ffn_output")[0][1]
    factors = sites.place_like(SharedFactors(config["phm_dim"]), first)
    model.add_module("compacter_factors", factors)
    sites.attach_sequential(model, arch, ("attention_output", "ffn_output"), "compacter", lambda dim: CompacterAdapter(
        dim, width_for(dim, config), factors, config["phm_rank"]))
    train_head(model, ctx)
    return Adapted(model)


register(
    Method("compacter", "hybrid", "Compacter: adapters of Kronecker sums with shared factors and rank-1 parts",
           "Karimi Mahabadi et al. 2021, Compacter: Efficient Low-Rank Hypercomplex Adapter Layers", _compacter,
           defaults={"reduction_factor": 32, "phm_dim": 4, "phm_rank": 1}, train={"lr": 3e-3}),
)
