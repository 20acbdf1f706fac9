"""Mean pooling for an encoder's classification head (bench/models.py: an encoder spec's `pooling`)."""

from __future__ import annotations

import torch


class MaskedMean(torch.nn.Module):
    """The mean of an encoder's output vectors over real (unmasked) tokens; no parameters."""

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None  # [batch, length], set before each forward of the backbone

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask if self.mask is not None else hidden.new_ones(hidden.shape[:2])
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def use_mean_pooling(model: torch.nn.Module) -> None:
    """Make the classification head read the masked mean of the encoder's outputs instead of its first
    token. BERT's head reads the pooler's output: the pooler (dense + tanh over [CLS]) is replaced by
    the mean, so its pretrained weights, which mean pooling does not use, are not counted or trained.
    Heads that read position 0 themselves (RoBERTa) find the mean there. The hooks find the mean through
    the module they are called on, never a closure, so a copy of the model (a merged copy) pools its own
    inputs."""
    backbone = getattr(model, model.base_model_prefix)
    backbone.register_forward_pre_hook(_stash_mask, with_kwargs=True)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = MaskedMean()
        return
    backbone.add_module("bench_mean_pool", MaskedMean())
    backbone.register_forward_hook(_mean_at_first_position)


def _mean_of(backbone: torch.nn.Module) -> "MaskedMean":
    return backbone.pooler if isinstance(getattr(backbone, "pooler", None), MaskedMean) else backbone.bench_mean_pool


def _stash_mask(backbone, args, kwargs):
    _mean_of(backbone).mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)


def _mean_at_first_position(backbone, args, output):
    hidden = output[0]
    first = torch.cat([_mean_of(backbone)(hidden).unsqueeze(1), hidden[:, 1:]], dim=1)  # the head reads [:, 0]
    if isinstance(output, tuple):
        return (first, *output[1:])
    output.last_hidden_state = first
    return output
