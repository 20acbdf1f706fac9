"""Compacter: adapters whose projections are sums of Kronecker products (in-house).

A PHM layer (parameterised hypercomplex multiplication) builds its weight as W = Σᵢ Aᵢ ⊗ Bᵢ with
i = 1..n. The n×n matrices Aᵢ are the "rule"; each Bᵢ is low rank, Bᵢ = sᵢ tᵢᵀ, so a d→k layer
costs d + k parameters plus its bias (and n³ for a rule of its own). Two recipes:
- compacter (Karimi Mahabadi et al. 2021): one rule shared by every PHM layer of the model; adapters
  where Houlsby's sit (after attention and after the FFN), GELU, reduction factor 32, n = 4; the up
  projection starts at zero, so the model starts unchanged. The bottleneck is rounded up to a multiple of n.
- compacter-pp, as T-Few runs "Compacter++" on T0 (r-three/t-few configs/compacter_pp.json,
  src/models/AdapterVariants): after the FFN only, ReLU, reduction factor 32, n = 4, rank 1, a rule per
  PHM layer (compacter_shared_phm_rule: false) drawn from N(0, 0.02²), sᵢ and tᵢ Glorot-uniform with
  gain √2, and every layer norm trains too (trainable_param_names ".*layer_norm.*|.*adapter.*"). Its
  up projection is not zero, so the model does not start as the base (T-Few's choice, kept).
  The rule's spread: T-Few's PHMLinear.reset_parameters draws an unfactorised rule (compacter_factorized_phm_rule:
  false) with c_init "normal" from N(0, 0.02²); its compacter_phm_init_range (10⁻⁴ in compacter_pp.json) only
  reaches factorised rules. Revision 1 drew the rule with std 10⁻⁴, 200 times narrower, which left the adapters
  ~4·10⁴ times weaker at the start than T-Few's (tests/test_parity_tfew.py).
"""

from __future__ import annotations

import math

from bench.archs import ARCHS
from bench.methods.base import Adapted, Method, freeze, register, train_head


def width_for(dim: int, config: dict) -> int:
    n = config["phm_dim"]
    return n * max(1, math.ceil(dim / config["reduction_factor"] / n))


def _compacter(model, config, ctx):
    from bench.layers import sites
    from bench.layers.phm import CompacterAdapter, PHMLinear, PHMRule

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


def _compacter_pp(model, config, ctx):
    from bench.layers import sites
    from bench.layers.bottleneck import train_norms
    from bench.layers.phm import CompacterAdapter, tfew_phm

    freeze(model)

    def adapter(dim):
        width = width_for(dim, config)
        return CompacterAdapter(tfew_phm(dim, width, config), tfew_phm(width, dim, config), config["activation"])

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
           _compacter_pp, defaults={"reduction_factor": 32, "phm_dim": 4, "phm_rank": 1, "phm_init_range": 0.02,
                                    "activation": "relu"}, train={"lr": 3e-3},
           revisions={arch: 2 for arch in ARCHS}),  # 2: the rules from N(0, 0.02²), as T-Few's (was 10⁻⁴)
)
