"""Compacter: adapters whose projections are sums of Kronecker products (in-house).

A PHM layer (parameterised hypercomplex multiplication) builds its weight as W = Σᵢ Aᵢ ⊗ Bᵢ with
i = 1..n. The n×n matrices Aᵢ are the "rule"; each Bᵢ is low rank, Bᵢ = sᵢ tᵢᵀ, so a d→k layer
costs d + k parameters plus its bias (and n³ for a rule of its own). Two recipes:
- compacter (Karimi Mahabadi et al. 2021): one rule shared by every PHM layer of the model; adapters
  where Houlsby's sit (after attention and after the FFN), GELU, reduction factor 32, n = 4; the up
  projection starts at zero, so the model starts unchanged. The bottleneck is rounded up to a multiple of n.
- compacter-pp, as T-Few runs "Compacter++" on T0 (r-three/t-few configs/compacter_pp.json,
  src/models/AdapterVariants): after the FFN only, ReLU, reduction factor 32, n = 4, rank 1, a rule per
  PHM layer (compacter_shared_phm_rule: false) drawn from N(0, 10⁻⁴), sᵢ and tᵢ Glorot-uniform with
  gain √2, and every layer norm trains too (trainable_param_names ".*layer_norm.*|.*adapter.*"). Its
  up projection is not zero, so the model starts within ~10⁻⁸ of the base (T-Few's choice, kept).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bench.methods import sites
from bench.methods.adapters import ACTIVATIONS, train_norms
from bench.methods.base import Adapted, Method, freeze, register, train_head


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


def width_for(dim: int, config: dict) -> int:
    n = config["phm_dim"]
    return n * max(1, math.ceil(dim / config["reduction_factor"] / n))


def _compacter(model, config, ctx):
    freeze(model)
    arch = ctx.bundle.arch
    first = sites.find(model, arch, "ffn_output")[0][1]
    rule = sites.place_like(PHMRule(config["phm_dim"]), first)
    model.add_module("compacter_factors", rule)

    def adapter(dim):
        width, rank = width_for(dim, config), config["phm_rank"]
        return CompacterAdapter(PHMLinear(dim, width, rule, rank), PHMLinear(width, dim, rule, rank, zero=True), "gelu")

    sites.attach_sequential(model, arch, ("attention_output", "ffn_output"), "compacter", adapter)
    train_head(model, ctx)
    return Adapted(model)


def _tfew_phm(in_features: int, out_features: int, config: dict) -> PHMLinear:
    """A PHM layer with its own rule, initialised as T-Few's PHMLinear (c_init normal, w_init glorot-uniform)."""
    layer = PHMLinear(in_features, out_features, PHMRule(config["phm_dim"]), config["phm_rank"], shared=False)
    with torch.no_grad():
        nn.init.normal_(layer.rule.a, std=config["phm_init_range"])
        for i in range(layer.s.shape[0]):
            nn.init.xavier_uniform_(layer.s[i], gain=math.sqrt(2))
            nn.init.xavier_uniform_(layer.t[i], gain=math.sqrt(2))
    return layer


def _compacter_pp(model, config, ctx):
    freeze(model)

    def adapter(dim):
        width = width_for(dim, config)
        return CompacterAdapter(_tfew_phm(dim, width, config), _tfew_phm(width, dim, config), config["activation"])

    sites.attach_sequential(model, ctx.bundle.arch, ("ffn_output",), "compacter", adapter)
    train_norms(model, ctx)
    train_head(model, ctx)
    return Adapted(model)


register(
    Method("compacter", "hybrid", "Compacter: adapters of Kronecker sums with shared factors and rank-1 parts",
           "Karimi Mahabadi et al. 2021, Compacter: Efficient Low-Rank Hypercomplex Adapter Layers", _compacter,
           defaults={"reduction_factor": 32, "phm_dim": 4, "phm_rank": 1}, train={"lr": 3e-3}),
    Method("compacter-pp", "hybrid", "Compacter++ as T-Few runs it: a PHM adapter after the FFN with a rule per "
           "layer, ReLU, and the layer norms", "Karimi Mahabadi et al. 2021, Compacter; as configured by Liu et al. "
           "2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
           _compacter_pp, defaults={"reduction_factor": 32, "phm_dim": 4, "phm_rank": 1, "phm_init_range": 1e-4,
                                    "activation": "relu"}, train={"lr": 3e-3}),
)
