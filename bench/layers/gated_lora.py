"""UniPELT's gated LoRA branch (bench/methods/hybrid.py), beside each attention q and v projection."""

from __future__ import annotations

import torch
from torch import nn

from bench.archs import ARCHS
from bench.layers import sites


class GatedLoRA(nn.Module):
    """x -> g(x) · B·A·x, with g = σ(w·x + c) per token; B starts at zero.

    The gate takes the place of LoRA's alpha/r, as in UniPELT's authors' code (their lora_layers.py sets the
    scaling to the gate) and AdapterHub's gated LoRA. `alpha` is only for adapters stored by unipelt revision
    2 or earlier, which multiplied by alpha/r too: they are rebuilt computing what they were trained with."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float | None = None):
        super().__init__()
        self.a = nn.Linear(in_features, r, bias=False)
        self.b = nn.Linear(r, out_features, bias=False)
        nn.init.kaiming_uniform_(self.a.weight, a=5 ** 0.5)
        nn.init.zeros_(self.b.weight)
        self.scaling = 1.0 if alpha is None else alpha / r
        self.gate = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(x)) * self.b(self.a(x)) * self.scaling


def add_gated_lora(model, arch: str, r: int, alpha: float | None = None) -> None:
    targets = tuple("." + t for t in ARCHS[arch].q_v)
    found = [(n, m) for n, m in model.named_modules() if n.endswith(targets) and hasattr(m, "weight")]
    for _, module in found:
        sites.attach_beside(module, "gated_lora", GatedLoRA(sites.in_features(module), sites.out_features(module),
                                                            r, alpha))
