"""The probe's counters (bench/cell/probe.py) against independent computations: bytes alive by hand, FLOPs
by torch's FlopCounterMode, saved storages by a hook that keeps every tensor."""

import gc
import sys
import types
import weakref

import pytest
import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from bench.cell.probe import ATTENTION_FLOPS, LiveBytes, StepCounters, custom_flops, instrumented_step
from bench.models import REGISTRY
from bench.tensors import storage_key
from tests.adapting import adapt, token_batch

CELLS = [("tiny-encoder", "dora"), ("tiny-gpt2", "lora"), ("tiny-t5", "prefix-tuning"), ("tiny-llama", "full"),
         ("tiny-bert", "adapter-houlsby"), ("tiny-gpt2", "prompt-tuning")]


def test_live_bytes_follow_a_two_layer_network_by_hand():
    """relu(x W1ᵀ) W2ᵀ summed, on this machine's device. Alive at once, at the busiest moment (ReLU's
    backward): the ReLU output that both it and the second product saved, the gradient arriving at it, the
    gradient it makes, W2's gradient, the loss and the loss's gradient (4 bytes each). Forward never holds
    more than two B × h tensors; the weights and the input existed before and do not count."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    b, i, h, o = 16, 8, 512, 4
    w1, w2 = (torch.nn.Parameter(torch.randn(shape, device=device)) for shape in [(h, i), (o, h)])
    x = torch.randn(b, i, device=device)
    with LiveBytes() as live:
        (torch.relu(x @ w1.t()) @ w2.t()).sum().backward()
    assert live.peak == 3 * 4 * b * h + 4 * o * h + 4 + 4
    assert live.current == 4 * (h * i + o * h)  # what outlives the block: the two gradients
    assert list(live.peaks) == [()]


def test_live_bytes_leave_out_views_in_place_results_and_what_existed():
    """Only storages an operator creates count: not a view, an in-place result, a returned input, nor a
    tensor made before the block; a new tensor counts until it is freed."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    before = torch.zeros(1000, device=device)
    with LiveBytes() as live:
        before.view(10, 100).add_(1).t().detach()
        new = before * 2
        assert live.current == 4000
        del new
    assert (live.peak, live.current) == (4000, 0)


def test_live_bytes_of_a_step_are_what_a_plain_step_holds():
    """peft's DoRA builds a side graph that a plain step frees at once. The probe's other counters (saved
    storages, FLOPs) run in the same pass and must not keep it: a saved-tensor hook that handed autograd the
    tensor itself, or a FLOP counter's module tracker, would (by 8 % here). The same on every run."""
    model = adapt("tiny-gpt2", "dora")[1].model.train()
    ids = torch.randint(5, 100, (4, 16))
    batch = {"input_ids": ids, "labels": ids}
    runs = []
    for _ in range(3):
        runs.append(instrumented_step(model, batch).live_peaks)
        for p in model.parameters():
            p.grad = None
    gc.collect()
    gc.disable()
    try:
        with LiveBytes() as plain:
            model(**batch).loss.backward()
    finally:
        gc.enable()
    assert runs == [{(): plain.peak}] * 3


def test_a_step_measures_the_same_with_earlier_garbage_uncollected():
    """instrumented_step runs no collection before its pass (a full one costs about 0.3 s in a test process): the
    counters follow only storages the pass makes, and garbage made earlier (reference cycles holding tensors,
    freed by no one while the collector waits) changes none of its figures."""
    model = adapt("tiny-gpt2", "dora")[1].model.train()
    ids = torch.randint(5, 100, (4, 16))
    batch = {"input_ids": ids, "labels": ids}

    def step():
        measured = instrumented_step(model, batch)
        for p in model.parameters():
            p.grad = None
        return measured

    gc.collect()
    clean = step()
    gc.disable()  # the cycles stay uncollected until the step has run
    try:
        garbage = []
        for _ in range(4):
            cycle = {"tensor": torch.ones(256, 256)}
            cycle["self"] = cycle
            garbage.append(weakref.ref(cycle["tensor"]))
        del cycle
        with_garbage = step()
        assert all(ref() is not None for ref in garbage)  # nothing collected them: the step ran beside them
    finally:
        gc.enable()
    assert with_garbage == clean


@pytest.mark.parametrize("attention", ["eager", "auto"])
@pytest.mark.parametrize("model_name,method", CELLS)
def test_counted_flops_are_flop_counter_modes(model_name, method, attention):
    """The counters apply FlopCounterMode's formulas operator by operator, without its module tracker. With the
    models' own attention (matrix products) torch's counter is the independent count; with SDPA (on a CPU,
    PyTorch's flash kernel, which torch's table lacks) both are given the harness's formula for it."""
    model = adapt(model_name, method, attention=attention)[1].model.train()
    batch = token_batch(4, 16, classes=REGISTRY[model_name].kind == "encoder")
    step = instrumented_step(model, batch)
    for p in model.parameters():
        p.grad = None
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as torch_count:
        model(**batch).loss.backward()
    assert step.forward_flops + step.backward_flops == torch_count.get_total_flops()
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as forward_only, torch.no_grad():
        model(**batch)
    assert step.forward_flops == forward_only.get_total_flops() > 0


@pytest.mark.parametrize("model_name,method", CELLS)
def test_activation_bytes_are_every_storage_autograd_saves(model_name, method):
    """memory.activation_bytes, against a saved-tensor hook that keeps every tensor it is given until the end
    (so no storage can be freed and its address reused) and counts each storage once, weights left out."""
    model = adapt(model_name, method)[1].model.train()
    batch = token_batch(4, 16, classes=REGISTRY[model_name].kind == "encoder")
    with torch.random.fork_rng():
        step = instrumented_step(model, batch)
    for p in model.parameters():
        p.grad = None
    kept = {}

    def keep(t):
        kept.setdefault(storage_key(t), t)
        return t

    with torch.random.fork_rng(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(**batch).loss.backward()
    own = {storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    assert step.activation_bytes == sum(t.untyped_storage().nbytes() for k, t in kept.items() if k not in own) > 0


class _SideGraphs(torch.nn.Module):
    """Graphs that each save a new 1 KiB storage (exp's output, for the weight's gradient); all but the last
    are dropped at once, so their storages are freed in forward, and the allocator hands some of their
    addresses to later ones."""

    graphs = 50

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(256))

    def forward(self, x):
        for _ in range(self.graphs - 1):
            (x.exp() * self.w).sum()
        return (x.exp() * self.w).sum()


def test_a_saved_storage_freed_in_forward_is_not_taken_for_a_later_one():
    model = _SideGraphs()
    step = instrumented_step(model, {"input_ids": torch.zeros(1, 256)}, loss_fn=lambda m, b: m(b["input_ids"][0]))
    assert step.activation_bytes == _SideGraphs.graphs * 256 * 4
    assert step.grad_bytes == 256 * 4


def test_step_counters_count_a_pass_by_hand_and_stop_at_the_block():
    """relu(x Wᵀ) summed: the product's FLOPs forward and for W's gradient (x needs none); saved, the input x
    (for W's gradient) and ReLU's output, W left out. After the block nothing more is counted."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    b, i, o = 8, 32, 64
    w = torch.nn.Parameter(torch.randn(o, i, device=device))
    x = torch.randn(b, i, device=device)
    with StepCounters() as counters:
        (x @ w.t()).relu().sum().backward()
    assert counters.flops == 2 * (2 * b * i * o)
    assert counters.saved_bytes_without([w]) == [4 * b * i, 4 * b * o]
    seen = (counters.flops, len(counters.saved))
    (x @ w.t()).relu().sum().backward()
    assert (counters.flops, len(counters.saved)) == seen


@pytest.mark.parametrize("op", sorted(ATTENTION_FLOPS, key=str))
def test_grouped_query_attention_is_counted_as_its_repeated_heads(op, monkeypatch):
    """A fused attention kernel given fewer key/value heads than query heads (grouped-query attention: LLaMA-2-70B,
    Mistral, TinyLlama, whenever the batch needs no padding mask) makes the products of the repeated heads:
    2·b·h·s_q·s_k·d FLOPs for each of QKᵀ and (·)V, and backward recomputes QKᵀ and makes four more. torch's
    formulas before 2.13 raised on such shapes, so every such cell failed there (on the GPU image's torch 2.11):
    here they are made as strict again, and the count must not depend on them accepting such shapes."""
    strict = {name: getattr(flop_counter, name) for name in ("sdpa_flop_count", "sdpa_backward_flop_count")}

    def equal_heads(name):
        def formula(*shapes):
            assert len({shape[1] for shape in shapes}) == 1, f"{name}: query/key/value shapes are incompatible"
            return strict[name](*shapes)
        return formula

    for name in strict:
        monkeypatch.setattr(flop_counter, name, equal_heads(name))
    b, heads, kv_heads, s_q, s_k, d = 2, 8, 2, 16, 24, 32
    query, key, grad_out = (b, heads, s_q, d), (b, kv_heads, s_k, d), (b, heads, s_q, d)
    product = 2 * b * heads * s_q * s_k * d
    if "backward" in str(op):
        assert ATTENTION_FLOPS[op](grad_out, query, key, key) == 5 * product
    else:
        assert ATTENTION_FLOPS[op](query, key, key) == 2 * product


def test_custom_flops_with_a_bitsandbytes_that_has_no_gemm_4bit(monkeypatch):
    """peft imports bitsandbytes in every cell where it is installed, and pyproject allows releases whose 4-bit
    product is F.linear, with no gemm_4bit operator: reading it raised AttributeError in every cell's probe."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setattr(torch.ops, "bitsandbytes", types.SimpleNamespace(), raising=False)
    assert custom_flops() == ATTENTION_FLOPS
