"""The optimizers' updates (bench/optimizers.py) against what their steps really dispatch and hold."""

import pytest
import torch

from bench.cell.probe import LiveBytes
from bench.optimizers import OPTIMIZERS, cuda_update, update_bytes, update_of


def _dispatched(optimizer) -> tuple[str, int]:
    """(the update `optimizer.step()` really makes, read off the operators it dispatches; the most bytes held
    at once by the tensors it creates, its temporaries): an independent account of update_of and update_bytes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = set()

    class Names(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Names(), LiveBytes() as live:
        optimizer.step()
    fused, foreach = any("_fused_" in n for n in names), any(n.startswith("_foreach_") for n in names)
    return ("fused" if fused else "foreach" if foreach else "for-loop"), live.peak


def _stepped(optimizer, params) -> tuple[str, int]:
    for _ in range(2):  # the second step: the state exists, as in every step after the first
        for p in params:
            p.grad = torch.randn_like(p)
        update, held = _dispatched(optimizer)
    return update, held


@pytest.mark.parametrize("update", ["fused", "foreach", "for-loop"])
def test_update_bytes_bounds_what_adamws_update_holds(update):
    """AdamW over real tensors on the CPU (where torch has all three updates): update_of names the update the
    step dispatches; a fused step holds no temporaries beyond scalars, foreach one per trainable element, a
    for-loop two of its largest tensor; update_bytes bounds each."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32)),
              torch.nn.Parameter(torch.randn(16, 64))]
    sizes = [p.nbytes for p in params]
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[update]
    optimizer = torch.optim.AdamW(params, lr=1e-3, **flags)
    dispatched, held = _stepped(optimizer, params)
    assert update_of(optimizer) == dispatched == update
    scalars = 64  # step counters, bias corrections
    assert held <= update_bytes(update, sizes) + scalars
    assert held >= {"fused": 0, "foreach": sum(sizes), "for-loop": 2 * max(sizes)}[update]
    if update == "fused":
        assert update_bytes(update, sizes) == 0 and held <= scalars


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_of_names_what_each_optimizer_dispatches_here(name):
    """On this machine's device (CUDA where there is one: fused AdamW, foreach SGD, for-loop Adafactors), each
    registry optimizer's update as recorded is the one its step dispatches."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = [torch.nn.Parameter(torch.randn(8, 4, device=device)), torch.nn.Parameter(torch.randn(4, device=device))]
    optimizer = OPTIMIZERS[name].build([{"params": params}], 1e-3)
    assert update_of(optimizer) == _stepped(optimizer, params)[0]
    if device == "cuda":
        assert update_of(optimizer) == cuda_update(name)


def test_estimate_predicts_the_update_torch_makes_on_cuda():
    """cuda_update, from fake CUDA parameters, follows torch's defaults: AdamW fused (the harness asks for it),
    SGD foreach, torch's Adafactor a for-loop unless foreach is asked for, transformers' Adafactor a for-loop."""
    assert {name: cuda_update(name) for name in OPTIMIZERS} == {
        "adamw": "fused", "sgd": "foreach", "adafactor": "for-loop", "adafactor-tfew": "for-loop",
        "adafactor-tfew-unscaled": "for-loop"}


def test_t_few_prompt_tunings_adafactor_does_not_scale_by_the_parameters_rms():
    """configs/prompt_tuning-10_prompts.json sets scale_parameter false; T-Few's other configs keep it true."""
    params = [{"params": [torch.nn.Parameter(torch.ones(2, 2))]}]
    assert OPTIMIZERS["adafactor-tfew"].build(params, 0.1).defaults["scale_parameter"] is True
    assert OPTIMIZERS["adafactor-tfew-unscaled"].build(params, 0.1).defaults["scale_parameter"] is False
