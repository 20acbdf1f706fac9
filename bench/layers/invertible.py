"""MAD-X's invertible adapter (Pfeiffer et al. 2020, §3.2): a NICE coupling block on the token embeddings.

The block splits each embedding e into halves e1 (the first ⌊d/2⌋ channels) and e2, and maps them to
y1 = e1 + F(e2), y2 = e2 + G(y1); F and G are bottlenecks (Linear, non-linearity, Linear) of width
⌊half / reduction_factor⌋. It is invertible (e2 = y2 − G(y1), e1 = y1 − F(e2)), so a language's invertible
adapter maps the shared embeddings into that language's space and its inverse maps the last hidden states back
before a tied LM head (the masked-LM training of a language adapter). As AdapterHub's NICECouplingBlock
(`SeqBnInvConfig`: inv_adapter "nice"), it sits on the output of the embeddings module (after its layer norm),
and its linear layers start as BERT's init (normal, std 0.02; biases zero), so it starts near, not at, the
identity.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from bench.errors import Unsupported
from bench.layers.bottleneck import ACTIVATIONS
from bench.layers.sites import place_like


def _subnet(fan_in: int, fan_out: int, reduction_factor: float, activation: str) -> nn.Sequential:
    width = int(fan_in // reduction_factor)
    return nn.Sequential(nn.Linear(fan_in, width), ACTIVATIONS[activation](), nn.Linear(width, fan_out))


class NiceCoupling(nn.Module):
    """y1 = e1 + F(e2), y2 = e2 + G(y1) over the last dimension; `inverse` undoes it."""

    def __init__(self, dim: int, reduction_factor: float = 2, activation: str = "relu"):
        super().__init__()
        self.split = dim // 2
        self.F = _subnet(dim - self.split, self.split, reduction_factor, activation)
        self.G = _subnet(self.split, dim - self.split, reduction_factor, activation)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : self.split], x[..., self.split:]
        y1 = x1 + self.F(x2)
        return torch.cat((y1, x2 + self.G(y1)), -1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[..., : self.split], y[..., self.split:]
        x2 = y2 - self.G(y1)
        return torch.cat((y1 - self.F(x2), x2), -1)


def _forward_hook(name: str, module, args, output):
    return getattr(module, name)(output)


def _inverse_pre_hook(name: str, owner: nn.Module, module, args):
    return (getattr(owner, name).inverse(args[0]),) + tuple(args[1:])


def attach_invertible(model: nn.Module, name: str, reduction_factor: float, activation: str) -> NiceCoupling:
    """A NiceCoupling on the output of an encoder's embeddings module (BERT/RoBERTa's `embeddings`: word, position
    and token-type embeddings, layer-normed), child of that module as `name`; its inverse runs on the input of the
    output embeddings (the MLM head's decoder) where the model has one."""
    embeddings = model.get_input_embeddings()
    owner = next((m for m in model.modules() if getattr(m, "word_embeddings", None) is embeddings), None)
    if owner is None:
        raise Unsupported(f"{type(model).__name__} has no embeddings module holding its word embeddings (an "
                          "encoder's), where the invertible adapter goes")
    block = place_like(NiceCoupling(embeddings.embedding_dim, reduction_factor, activation), embeddings)
    owner.add_module(name, block)
    owner.register_forward_hook(functools.partial(_forward_hook, name))
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        output.register_forward_pre_hook(functools.partial(_inverse_pre_hook, name, owner))
    return block
