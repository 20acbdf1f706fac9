"""The optimizers a suite can name: one table that training builds from, the configuration checks
against, and `estimate` predicts the state of.

Each is torch's implementation with torch's defaults but the learning rate and weight decay (which
the training settings give). `state_bytes` is what the optimizer holds for one trainable tensor after
its first step, following torch's state initialisation (`tests/test_train.py` checks it against the
state a real step leaves): it is `memory.optimizer_bytes` before a step has run (`estimate`, which
works on meta tensors that no optimizer can step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STEP_COUNTER_BYTES = 4  # torch's AdamW and Adafactor count steps in a float32 scalar tensor per parameter


@dataclass(frozen=True)
class Optimizer:
    name: str
    description: str
    torch_class: str  # in torch.optim
    state_bytes: Callable  # (trainable tensor) -> bytes of state after the first step

    def build(self, groups, lr: float):
        import torch  # the table is read by config checks, which need no torch

        return getattr(torch.optim, self.torch_class)(groups, lr=lr)


def _adafactor_state(p) -> int:
    """A matrix keeps factored second moments, a row (shape[:-1]) and a column (shape[:-2] + shape[-1:])
    factor; a vector keeps a full one."""
    moments = p.numel() // p.shape[-1] + p.numel() // p.shape[-2] if p.dim() > 1 else p.numel()
    return moments * p.element_size() + STEP_COUNTER_BYTES


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("adamw", "AdamW (decoupled weight decay; betas 0.9, 0.999; eps 1e-8)", "AdamW",
              lambda p: 2 * p.numel() * p.element_size() + STEP_COUNTER_BYTES),
    Optimizer("adafactor", "Adafactor (factored second moments, no first moment; torch's defaults: "
              "beta2_decay -0.8, eps (None, 1e-3), d 1.0)", "Adafactor", _adafactor_state),
    Optimizer("sgd", "plain SGD (no momentum: no state)", "SGD", lambda p: 0),
)}


def state_bytes(name: str, trainable) -> int:
    """memory.optimizer_bytes predicted for these trainable tensors."""
    return sum(OPTIMIZERS[name].state_bytes(p) for p in trainable)
