"""ProPETL's shared prototypes and per-layer learned masks (bench/methods/propetl.py, where the method and
the authors' choices it follows are described)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bench.layers.bottleneck import Bottleneck


def kept(numel: int, keep_ratio: float) -> int:
    """Entries a mask keeps: the authors' GetSubnet drops floor((1 - keep_ratio)·n) of n."""
    return numel - int((1 - keep_ratio) * numel)


class MaskScores(nn.Module):
    """One layer's real-valued scores over one prototype matrix; its mask keeps the largest |scores|."""

    def __init__(self, shape: torch.Size, keep_ratio: float, bound: float):
        super().__init__()
        self.scores = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.keep_ratio = keep_ratio

    def binary(self) -> torch.Tensor:
        magnitude = self.scores.detach().abs().flatten()
        mask = torch.zeros(magnitude.shape, dtype=torch.bool, device=magnitude.device)
        mask[magnitude.topk(kept(magnitude.numel(), self.keep_ratio), sorted=False).indices] = True
        return mask.view(self.scores.shape)

    def forward(self) -> torch.Tensor:
        """The 0/1 mask in the forward pass; in the backward pass its gradient goes to |scores| unchanged."""
        magnitude = self.scores.abs()
        return self.binary().to(magnitude.dtype) + (magnitude - magnitude.detach())


class AdapterPrototype(Bottleneck):
    """The shared bottleneck, run with a layer's masks on its down and up weights."""

    def masked(self) -> dict[str, tuple[torch.Tensor, int]]:
        # the authors hold adapter scores as [in, out]: kaiming's fan is the weight's output width
        return {"down": (self.down.weight, self.down.weight.shape[0]), "up": (self.up.weight, self.up.weight.shape[0])}

    def forward(self, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.act(F.linear(x, self.down.weight * masks["down"], self.down.bias))
        return F.linear(hidden, self.up.weight * masks["up"], self.up.bias) * self.scaling


class LoRAPrototype(nn.Module):
    """The shared low-rank pair: x -> (alpha/r)·(B ⊙ M_B)(A ⊙ M_A)·x with a layer's masks; B starts at zero."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float):
        super().__init__()
        self.a = nn.Parameter(torch.empty(r, in_features))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(out_features, r))
        self.scaling = alpha / r

    def masked(self) -> dict[str, tuple[torch.Tensor, int]]:
        # the authors hold LoRA scores in the weights' own shapes: kaiming's fan is the input width
        return {"a": (self.a, self.a.shape[1]), "b": (self.b, self.b.shape[1])}

    def forward(self, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(F.linear(x, self.a * masks["a"]), self.b * masks["b"]) * self.scaling


class LayerMasks(nn.Module):
    """One layer's masks over the shared prototype; calling it runs the prototype through them."""

    def __init__(self, prototype: nn.Module, keep_ratio: float, score_scale: float):
        super().__init__()
        self.masks = nn.ModuleDict({name: MaskScores(weight.shape, keep_ratio, score_scale / math.sqrt(fan))
                                    for name, (weight, fan) in prototype.masked().items()})
        object.__setattr__(self, "prototype", prototype)  # shared: registered once, on the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototype(x, {name: scores() for name, scores in self.masks.items()})
