"""The optimizers a suite can name: one table that training builds from, the configuration checks
against, and `estimate` predicts the state of.

Each is torch's implementation with torch's defaults but the learning rate and weight decay (which
the training settings give), except `adafactor-tfew`: transformers' Adafactor configured as T-Few
configures it (r-three/t-few src/utils/get_optimizer.py: scale_parameter on, relative_step and
warmup_init off), since its step differs from torch's (the update is scaled by each parameter's RMS).
`state_bytes` is what the optimizer holds for one trainable tensor after its first step, following
the optimizer's state initialisation (`tests/test_train.py` checks it against the state a real step
leaves): it is `memory.optimizer_bytes` before a step has run (`estimate`, which works on meta tensors
that no optimizer can step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STEP_COUNTER_BYTES = 4  # torch's AdamW and Adafactor count steps in a float32 scalar tensor per parameter


# How an optimizer applies its update (train.optimizer_update), which decides what the update holds at once:
# `fused`: one kernel updates every tensor in place, holding no temporaries; `foreach`: multi-tensor ops, whose
# intermediate results (AdamW's: the sqrt of the second moments) cover every trainable element at once;
# `for-loop`: one tensor after another, so temporaries for one tensor at a time.
UPDATES = ("fused", "foreach", "for-loop")


@dataclass(frozen=True)
class Optimizer:
    name: str
    description: str
    make: Callable  # (parameter groups, lr) -> a torch optimizer
    state_bytes: Callable  # (trainable tensor) -> bytes of state after the first step

    def build(self, groups, lr: float):
        return self.make(groups, lr)


def _torch(class_name: str) -> Callable:
    def make(groups, lr: float):
        import torch  # the table is read by config checks, which need no torch

        return getattr(torch.optim, class_name)(groups, lr=lr)

    return make


def _adamw(groups, lr: float):
    """torch's AdamW; its fused kernel (one launch for every tensor) when every parameter is on CUDA."""
    import torch

    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, fused=True if on_cuda else None)


def _tfew_adafactor(groups, lr: float, scale_parameter: bool = True):
    from transformers.optimization import Adafactor

    return Adafactor(groups, lr=lr, scale_parameter=scale_parameter, relative_step=False, warmup_init=False)


def _adafactor_state(p) -> int:
    """A matrix keeps factored second moments, a row (shape[:-1]) and a column (shape[:-2] + shape[-1:])
    factor; a vector keeps a full one."""
    moments = p.numel() // p.shape[-1] + p.numel() // p.shape[-2] if p.dim() > 1 else p.numel()
    return moments * p.element_size() + STEP_COUNTER_BYTES


def _tfew_adafactor_state(p) -> int:
    """transformers' Adafactor keeps the same factored moments, always in fp32 (it steps half-precision
    parameters through an fp32 copy), plus the update's RMS as a 0-d fp32 tensor; its step is a Python int."""
    moments = p.numel() // p.shape[-1] + p.numel() // p.shape[-2] if p.dim() > 1 else p.numel()
    return 4 * moments + 4


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("adamw", "AdamW (decoupled weight decay; betas 0.9, 0.999; eps 1e-8; fused on CUDA)", _adamw,
              lambda p: 2 * p.numel() * p.element_size() + STEP_COUNTER_BYTES),
    Optimizer("adafactor", "torch's Adafactor (factored second moments, no first moment; torch's defaults: "
              "beta2_decay -0.8, eps (None, 1e-3), d 1.0)", _torch("Adafactor"), _adafactor_state),
    Optimizer("adafactor-tfew", "transformers' Adafactor as T-Few runs it: the step scaled by the parameter's "
              "RMS (scale_parameter), the given lr (no relative step, no warmup init), fp32 factored moments",
              _tfew_adafactor, _tfew_adafactor_state),
    Optimizer("adafactor-tfew-unscaled", "adafactor-tfew without the RMS scaling (scale_parameter false: T-Few's "
              "prompt tuning config)", lambda groups, lr: _tfew_adafactor(groups, lr, scale_parameter=False),
              _tfew_adafactor_state),
    Optimizer("sgd", "plain SGD (no momentum: no state)", _torch("SGD"), lambda p: 0),
)}


def update_of(optimizer) -> str:
    """The update (UPDATES) a built torch optimizer makes: fused or foreach as asked, else torch's default,
    which is foreach where every parameter is on CUDA, except for torch's Adafactor, whose default is the
    for-loop (its docstring: foreach only when asked). Optimizers without a foreach setting (transformers'
    Adafactor) loop."""
    import torch

    settings = optimizer.defaults
    if settings.get("fused"):
        return "fused"
    foreach = settings.get("foreach")
    loops_by_default = getattr(torch.optim, "Adafactor", ())  # torch >= 2.5 has it; the package allows 2.4
    if foreach is None and "foreach" in settings and not isinstance(optimizer, loops_by_default):
        foreach = all(p.is_cuda for group in optimizer.param_groups for p in group["params"])
    return "foreach" if foreach else "for-loop"


def cuda_update(name: str) -> str:
    """The update optimizer `name` makes on CUDA (what `estimate` predicts for): update_of the optimizer built
    over a fake CUDA parameter, so any machine can tell."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return update_of(OPTIMIZERS[name].build([{"params": [torch.nn.Parameter(torch.empty(2, 2, device="cuda"))]}],
                                                1e-3))


def update_bytes(update: str, tensor_bytes: list[int]) -> int:
    """What the update holds besides the state at its busiest, given the trainable tensors' sizes: nothing when
    fused; AdamW's foreach one temporary per trainable element; a for-loop one tensor's temporaries at a time
    (AdamW: two of its size), bounded here by the larger of the foreach figure and twice the largest tensor."""
    if update == "fused":
        return 0
    total = sum(tensor_bytes)
    return total if update == "foreach" else max(total, 2 * max(tensor_bytes, default=0))


def state_bytes(name: str, trainable) -> int:
    """memory.optimizer_bytes predicted for these trainable tensors."""
    return sum(OPTIMIZERS[name].state_bytes(p) for p in trainable)
