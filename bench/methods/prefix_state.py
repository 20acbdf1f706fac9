"""What a method with a prefix bank (prefix tuning, MAM, UniPELT) stores and loads: the prefix MLP folded into
the prefix it produces, which is all inference needs. Like every module of bench/methods/, it imports no torch
until it is used (planning never loads torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.methods.base import Adapted, load_by_name, trainable_state

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.layers.attention_prefix import PrefixBank

FOLDED = "bench_prefix_bank.prefix"


def stored_prefix_state(model: nn.Module, bank: PrefixBank) -> dict[str, torch.Tensor]:
    """Trainable tensors with the prefix MLP folded into the prefix it produces (what inference needs)."""
    state = trainable_state(model, skip={id(p) for p in bank.parameters()})
    state[FOLDED] = bank.folded().detach()
    return state


def load_prefix_state(model: nn.Module, bank: PrefixBank, state: dict[str, torch.Tensor]) -> None:
    """Inverse of stored_prefix_state: the bank now holds the folded prefix directly (no MLP)."""
    from torch import nn

    for name in ("embedding", "mlp"):
        if hasattr(bank, name):
            delattr(bank, name)
    bank.prefix = nn.Parameter(state[FOLDED].clone().to(next(model.parameters()).device))
    load_by_name(model, {k: v for k, v in state.items() if k != FOLDED})


def prefixed(model: nn.Module, bank: PrefixBank) -> Adapted:
    """The adapted model of a method with a prefix bank: stored with the prefix MLP folded away."""
    return Adapted(model, stored_state=lambda: stored_prefix_state(model, bank),
                   load_stored=lambda state: load_prefix_state(model, bank, state))
