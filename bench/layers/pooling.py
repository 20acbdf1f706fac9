"""Mean pooling for an encoder's classification head (bench/models.py: an encoder spec's `pooling`), and
the last-token reading a decoder's head needs when it is fed input embeddings (bench/methods/prompts.py)."""

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


def use_last_attended(model: torch.nn.Module, head_modules: tuple[str, ...]) -> None:
    """Make a decoder's classifier heads read each row's last attended position, as they do when they find
    the last token in input ids: the heads' output at the last position is replaced by their output there.
    Hooks, not closures, as above: a copy of the model reads its own mask."""
    model.bench_classifier_heads = head_modules
    model.register_forward_pre_hook(_hand_mask_to_heads, with_kwargs=True)
    for name in head_modules:
        model.get_submodule(name).register_forward_hook(_at_last_attended)


def _hand_mask_to_heads(model, args, kwargs):
    for name in model.bench_classifier_heads:
        model.get_submodule(name).bench_attention_mask = kwargs.get("attention_mask")


def _at_last_attended(head, args, out):
    mask, head.bench_attention_mask = getattr(head, "bench_attention_mask", None), None  # one use
    if mask is None:  # no padding: the last position is every row's last token
        return out
    positions = torch.arange(mask.shape[-1], device=mask.device)
    last = (mask.long() * positions).argmax(-1)  # the highest attended position; right or left padding
    rows = torch.arange(out.shape[0], device=out.device)
    return torch.cat([out[:, :-1], out[rows, last].unsqueeze(1)], dim=1)
