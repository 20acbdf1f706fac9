"""CUDA's memory-efficient attention on the estimate's fake tensors (bench/tools/efficient_attention.py), for sdpa with
a mask that needs a gradient (T5's trained position bias): what it keeps, allocates and counts, against closed forms
of the kernel's tensors written from B, H, L, D and the dtype, and against the CPU's math kernel. No GPU has measured
a T5 step: these are the checks there are."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from bench import tiny
from bench.cell.probe import StepCounters
from bench.tools import efficient_attention
from bench.tools.cuda_step import departures, step_on

B, H, D = 2, 4, 16
BF16 = 2  # bytes an element
BACKWARD = torch.ops.aten._scaled_dot_product_efficient_attention_backward.default


def _round_up(n: int, to: int) -> int:
    return math.ceil(n / to) * to


class _Outputs(TorchDispatchMode):
    """The storage bytes of each output of the operators run within it, by operator."""

    def __init__(self):
        super().__init__()
        self.bytes = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.bytes[func] = [t.untyped_storage().nbytes() if torch.is_tensor(t) else None
                            for t in (out if isinstance(out, (tuple, list)) else [out])]
        return out


def _attention_step(length: int, on_cuda: bool, dtype=torch.bfloat16, head: int = D):
    """sdpa's forward and backward on fake q, k, v laid out as a linear layer's output (B, L, H, D) viewed as
    (B, H, L, D), as T5 makes them, with a trained (1, H, L, L) bias as the mask: (counters, saved bytes but the
    inputs', the operators' outputs, the bias's gradient)."""
    mode = FakeTensorMode()
    with mode:
        q, k, v = (torch.randn(B, length, H, head, dtype=dtype).transpose(1, 2).requires_grad_() for _ in range(3))
        bias = torch.randn(1, H, length, length, dtype=dtype, requires_grad=True)
    device = step_on("cuda", autocast=False) if on_cuda else contextlib.nullcontext()
    with device, mode, StepCounters() as counters, _Outputs() as outputs:
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0).sum().backward()
    return counters, sum(counters.saved_bytes_without([q, k, v, bias])), outputs.bytes, bias.grad


@pytest.mark.parametrize("length", [13, 24, 32])
def test_the_twin_keeps_what_the_efficient_kernel_keeps_and_not_the_probabilities(length):
    """Kept for backward, beyond q, k, v and the bias: the output (B, H, L, D), the log-sum-exp (B, H, L rounded up
    to 32, fp32) and the philox seed and offset (8 bytes each), and where the bias's rows are not 8-element aligned
    (L = 13) its padded copy (1, H, L, L rounded up to 8). The CPU's math kernel keeps the probabilities and its
    copies of q, k and v, all in fp32 (it computes bf16 in fp32); the difference is exactly that."""
    padded = length % 8 != 0
    _, twin, outputs, grad = _attention_step(length, on_cuda=True)
    output, log_sumexp, seed_and_offset = B * H * length * D * BF16, B * H * _round_up(length, 32) * 4, 2 * 8
    bias_copy = H * length * _round_up(length, 8) * BF16 if padded else 0
    assert twin == output + log_sumexp + seed_and_offset + bias_copy
    _, on_math, _, math_grad = _attention_step(length, on_cuda=False)
    probabilities, qkv_in_fp32 = B * H * length * length * 4, 3 * B * H * length * D * 4
    assert on_math == probabilities + qkv_in_fp32
    assert on_math - twin == probabilities + qkv_in_fp32 - (output + log_sumexp + seed_and_offset + bias_copy)
    # backward: the gradients of q, k, v, and the bias's over the expanded (B, H, L, S) with S rounded up to 16
    assert outputs[BACKWARD] == [B * H * length * D * BF16] * 3 + [B * H * length * _round_up(length, 16) * BF16]
    assert (grad.shape, grad.dtype) == (math_grad.shape, math_grad.dtype) == ((1, H, length, length), torch.bfloat16)


def test_the_twin_counts_flops_as_every_fused_kernel_does():
    """The FLOP counter's formulas for fused attention count the backward's recomputation of the scores, one product
    of 2 B H L L D FLOPs more than the math kernel, which kept the probabilities."""
    length = 24
    twin, math_kernel = (_attention_step(length, on_cuda)[0].flops for on_cuda in (True, False))
    assert twin - math_kernel == 2 * B * H * length * length * D


@pytest.mark.parametrize("dtype, head, taken", [(torch.bfloat16, 16, True), (torch.bfloat16, 12, False),
                                                (torch.float32, 12, True), (torch.float32, 10, False)])
def test_where_the_efficient_kernel_takes_no_inputs_cuda_runs_its_math_kernel(dtype, head, taken):
    """The kernel takes a head dimension that is a multiple of 8 in bf16, of 4 in fp32 (sm80 and newer); otherwise
    CUDA, like the CPU, runs its math kernel, which keeps the L x L probabilities: the step departs from a GPU's in
    neither case."""
    length = 16
    with departures() as departed:
        counters, _, outputs, _ = _attention_step(length, on_cuda=True, dtype=dtype, head=head)
    assert departed == []
    assert (BACKWARD in outputs) == taken
    probabilities = B * H * length * length * 4
    assert (probabilities in [size for _, size in counters.saved]) == (not taken)


def test_real_tensors_run_the_math_kernel_and_say_so():
    """The twin's operators have no CPU kernel: a real step under step_on takes the math kernel and departs; outside
    the block sdpa is torch's own again. Both compute softmax(q kᵀ + bias) v, and the bias's gradient."""
    q, k, v = (torch.randn(B, H, 8, D, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, H, 8, 8, requires_grad=True)
    expected = torch.softmax(q @ k.transpose(-1, -2) + bias, -1) @ v
    with step_on("cuda", autocast=False), departures() as departed:
        inside = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    assert [reason[:40] for reason in departed] == ["sdpa with a mask that needs a gradient ("]
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("aten::scaled_dot_product_attention", "AutogradCPU")
    outside = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    for out in (inside, outside):
        torch.testing.assert_close(out, expected)
        (grad,) = torch.autograd.grad(out.sum(), bias)
        torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), bias, retain_graph=True)[0])


@pytest.mark.parametrize("rows, length", [(2, 8), (4, 13)])
def test_tiny_t5s_estimate_saves_what_the_twin_keeps_instead_of_cudas_math_kernel(monkeypatch, rows, length):
    """T5 full fine-tuning, bf16 autocast: each of its 2 x DEPTH self-attentions (the encoder's and the decoder's)
    gets a trained bias. Against CUDA's math kernel (the twin turned away), per attention, the twin no longer keeps
    the fp32 probabilities, their dropout mask (1 byte) and dropped copy (fp32), and the math kernel's fp32 copies of
    q, k, v nor the output's bf16 copy the output projection reads; it keeps q, k, v themselves (bf16), the bias
    (1, H, L, L rounded up to 8; bf16), the log-sum-exp and the seed and offset. Its output (B, L, H, D in memory)
    is what the projection reads: not a copy more. Nothing departs from a GPU's step any longer."""
    from bench.tools.estimate import estimate

    heads, head = tiny.HEADS, tiny.WIDTH // tiny.HEADS
    twin = estimate("tiny-t5", "full", batch_size=rows, seq_len=length)
    monkeypatch.setattr(efficient_attention, "takes", lambda *args: False)
    on_math = estimate("tiny-t5", "full", batch_size=rows, seq_len=length)
    assert twin["memory"]["not_modelled"] == on_math["memory"]["not_modelled"] == []
    square, qkv = rows * heads * length * length, rows * heads * length * head
    math_keeps = 4 * square + square + 4 * square + 3 * 4 * qkv + BF16 * qkv
    twin_keeps = 3 * BF16 * qkv + BF16 * qkv + heads * length * _round_up(length, 8) * BF16 \
        + rows * heads * _round_up(length, 32) * 4 + 2 * 8
    attentions = 2 * tiny.DEPTH
    assert on_math["memory"]["activation_bytes"] - twin["memory"]["activation_bytes"] == \
        attentions * (math_keeps - twin_keeps)


def test_the_depth_extrapolation_holds_with_the_twin():
    """t5-small's step as a GPU runs it (the twin in each self-attention), extended from a few blocks per stack,
    equals the pass through all of them, the most bytes alive at once included."""
    from bench.tools.fake_pass import fake_step
    from tests.adapting import adapt

    model = adapt("t5-small", "full", total_steps=1, meta=True)[1].model
    with departures() as departed:
        full = fake_step(model, "encoder-decoder", 2, 8, extrapolate=False, device="cuda", autocast=True)
        assert fake_step(model, "encoder-decoder", 2, 8, device="cuda", autocast=True) == full
    assert departed == []


def _inputs(length=16, heads_k=H, offset=0, mask_dtype=torch.bfloat16, mask_transposed=False):
    """q, k, v (B, H, L, D; k and v with `heads_k` heads; q at storage `offset`) and a (1, H, L, L) mask."""
    q = torch.randn(B * H * length * D + offset, dtype=torch.bfloat16)[offset:].view(B, H, length, D)
    k, v = (torch.randn(B, heads_k, length, D, dtype=torch.bfloat16) for _ in range(2))
    mask = torch.randn(1, H, length, length, dtype=mask_dtype)
    return q, k, v, mask.transpose(-1, -2) if mask_transposed else mask


@pytest.mark.parametrize("inputs, taken", [
    (dict(), True), (dict(length=0), False), (dict(heads_k=H // 2), False), (dict(offset=1), False),
    (dict(offset=8), True), (dict(mask_dtype=torch.float32), False), (dict(mask_transposed=True), False)],
    ids=["dense", "empty", "grouped heads", "offset 1", "offset 8", "fp32 mask", "mask's last stride"])
def test_the_kernel_takes_inputs_by_its_own_rules(inputs, taken):
    """can_use_mem_efficient_attention's checks, each on inputs built to break one: an empty sequence, grouped heads
    (this torch's kernel takes one head count), q's storage not 8-element aligned (8 is), a mask of another dtype
    than q's, a mask whose last dimension is not contiguous."""
    assert efficient_attention.takes(*_inputs(**inputs)) is taken


@pytest.mark.parametrize("columns, padded_to", [(16, None), (20, 24), (24, None)])
def test_the_mask_is_padded_by_its_strides_as_the_composite_pads_it(columns, padded_to):
    """preprocess_mask pads a mask whose row stride is not a multiple of 8 elements by 8 - S mod 8 (a new tensor the
    kernel keeps), whatever its size: a (1, H, 16, 20) mask sliced to 16 columns (stride 20) is copied at 24 columns;
    a contiguous 16, or one sliced from 24 columns, is not copied. Without a gradient the kernel computes no
    log-sum-exp (width 0)."""
    length = 16
    with FakeTensorMode():
        q, k, v = (torch.randn(B, H, length, D, dtype=torch.bfloat16) for _ in range(3))
        mask = torch.randn(1, H, length, columns, dtype=torch.bfloat16)[..., :length]
        with torch.no_grad(), _Outputs() as outputs:
            efficient_attention.attention(q, k, v, mask, 0.0, False, None)
    pad = outputs.bytes.get(torch.ops.aten.constant_pad_nd.default)
    assert pad == (None if padded_to is None else [H * length * padded_to * BF16])
    forward = outputs.bytes[torch.ops.aten._scaled_dot_product_efficient_attention.default]
    assert forward[:2] == [B * H * length * D * BF16, 0]
