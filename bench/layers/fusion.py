"""AdapterFusion (Pfeiffer et al. 2021): task adapters trained apart, then per layer an attention over their
outputs, trained for a target task with the adapters frozen (bench/methods/fusion.py).

Per layer, at the place of Pfeiffer's adapter (after the FFN block: bench/layers/sites.attach_after_ffn_block),
with y the block's output the adapters read (post-LN: LN(h + x)) and u_i = adapter_i(y) each adapter's up
projection's output:
    q = W_q y + b_q,  k_i = W_k u_i + b_k,  v_i = W_v u_i  (no bias),
    a = softmax_i(q · k_i)  (over the adapters, per token; dropout on the scores before it),
    fused = Σ_i a_i v_i,
which the site adds as an adapter's output is added (post-LN: LN(h + x + fused)). This is AdapterHub's
`BertFusion` under its default DynamicAdapterFusionConfig (query, key and value; value before the softmax, its
weight started at the identity with 1e-6 elsewhere, query and key at N(0, 0.02²) with zero bias; no temperature),
and its regularisation 0.01 · ||I − W_v||²_F per layer, which pulls the value matrix back to the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.layers import sites
from bench.layers.bottleneck import Bottleneck, bottleneck_width

REGULARIZATION = 0.01  # AdapterHub's weight of ||I - W_v||² (model_mixin.get_fusion_regularization_loss)
VALUE_OFF_DIAGONAL = 1e-6  # value_initialized: the identity, every other entry this


class Fusion(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            for linear in (self.query, self.key):
                linear.weight.normal_(0.0, 0.02)
                linear.bias.zero_()
            self.value.weight.fill_(VALUE_OFF_DIAGONAL).fill_diagonal_(1.0)

    def forward(self, query: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """query (..., d), outputs (..., n adapters, d) -> the fused output (..., d)."""
        q, k, v = self.query(query), self.key(outputs), self.value(outputs)
        scores = torch.matmul(q.unsqueeze(-2), k.transpose(-2, -1)).squeeze(-2)  # (..., n)
        weights = torch.softmax(self.dropout(scores), dim=-1)
        return torch.matmul(weights.unsqueeze(-2), v).squeeze(-2)

    def regularization_grad(self) -> None:
        """Add the regulariser's gradient, 2 · 0.01 · (W_v − I), to W_v's: the same update as adding
        0.01 · ||I − W_v||² to the loss (AdapterHub adds it to the loss; the recorded loss here leaves it out)."""
        weight = self.value.weight
        if weight.grad is None:
            return
        identity = torch.eye(weight.shape[0], device=weight.device, dtype=weight.dtype)
        weight.grad.add_(2 * REGULARIZATION * (weight.detach() - identity))


class FusedAdapters(nn.Module):
    """The frozen task adapters of one layer and the fusion over their outputs: a branch for the adapter's site."""

    def __init__(self, adapters: list[Bottleneck], fusion: Fusion):
        super().__init__()
        self.adapters = nn.ModuleList(adapters)
        self.fusion = fusion

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fusion(y, torch.stack([adapter(y) for adapter in self.adapters], dim=-2))


def add_fusion(model, arch: str, config: dict, n_adapters: int, name: str, dropout: float) -> list[Fusion]:
    """FusedAdapters of `n_adapters` bottlenecks (sized by `config` as Pfeiffer's adapter) after each FFN block;
    returns the fusion layers."""
    def branch(dim: int) -> FusedAdapters:
        width = bottleneck_width(dim, config)
        fused = FusedAdapters([Bottleneck(dim, width, config["activation"]) for _ in range(n_adapters)],
                              Fusion(dim, dropout))
        fused.adapters.requires_grad_(False)  # trained apart, composed here as they are
        return fused

    sites.attach_after_ffn_block(model, arch, name, branch)
    return [m for m in model.modules() if isinstance(m, Fusion)]


def adapter_tensors(states: list[dict[str, torch.Tensor]], adapter: str) -> list[dict[str, torch.Tensor]]:
    """The task adapters' tensors in the states their cells saved, under those cells' names (their heads are left
    behind): what a fusion reads of each."""
    out = []
    for i, state in enumerate(states):
        found = {key: value for key, value in state.items() if f".{adapter}." in key}
        if not found:
            raise ValueError(f"the state of fused adapter {i} holds no '{adapter}' tensors: not a Pfeiffer adapter")
        out.append(found)
    return out


def fused_state(adapters: list[dict[str, torch.Tensor]], adapter: str, name: str) -> dict[str, torch.Tensor]:
    """adapter_tensors under the fused model's names: adapter i's `<site>.<adapter>.<rest>` becomes
    `<site>.<name>.adapters.<i>.<rest>`."""
    return {key.replace(f".{adapter}.", f".{name}.adapters.{i}.", 1): value
            for i, found in enumerate(adapters) for key, value in found.items()}
