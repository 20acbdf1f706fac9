"""Liger's kernels in the memory prediction (`estimate --kernels liger`, a cell with `train.kernels: liger`).

Liger's kernels are Triton, so neither the estimate's fake tensors nor a CPU can run them. What the prediction needs
of them is what they allocate and what they save for backward; the kernels themselves allocate nothing (they write
into tensors allocated in Python before they launch). So each kernel is stood in for by a memory twin: an autograd
function that allocates, saves and frees the tensors Liger's Python code does, in the same order, and computes no
values (it runs on the estimate's fake tensors only, which have none). The fake-tensor step
(bench/tools/fake_pass.py) then accounts them as it accounts any operator. Each line below names the line of Liger it
follows, in liger-kernel 0.8.5 (the wheel benchmarks/gpu_kit.sh carries to the GPU; liger_kernel/ in the wheel):
where Liger's Python code branches on the device, the twin takes the branch of a CUDA GPU of compute capability 8
or more with torch >= 2.8, the hidden states and the head in one dtype, as under no autocast or an autocast of the
weights' dtype (bf16 weights under a cell's bf16 autocast); elsewhere the fused loss takes another path, which the
twin says (bench/tools/cuda_step.depart: the estimate's `memory.not_modelled`).

The twins are bound where bench/cell/kernels.py has Liger bind its kernels, on the built model before a method
adapts it (transformers/monkey_patch.py:259-323, apply_liger_kernel_to_llama with `model=`):

- RMSNorm (ops/rms_norm.py): forward allocates Y [rows, H] in X's dtype (:462) and RSTD [rows] in fp32 (llama
  casting, :465-466), and saves X itself, W and RSTD (:674). torch's LlamaRMSNorm saves an fp32 copy of X instead,
  and, where the weight trains, the normalised X in X's dtype. Backward writes dX into dY (in_place, :556) and,
  where the weight trains, sums dW from an fp32 [SMs, H] buffer (:542-544, :622).
- SwiGLU MLP (transformers/swiglu.py:35): gate and up projections as before; SiLU(gate) x up is one kernel that
  allocates its output (ops/swiglu.py:165) and saves gate and up (:272); backward writes their gradients into
  them (:305-306), so it allocates nothing. torch saves gate, SiLU(gate) and up, and allocates the gradients.
- Rotary embedding (ops/rope.py): rotates q and k in place and saves cos and sin (:289), what torch's
  apply_rotary_pos_emb saves too; not stood in for, so the forward's transient rotated copies torch makes (a few
  q- and k-sized tensors of one layer at a time) stay in the prediction: slightly high in the forward, if anywhere.
- Fused linear cross-entropy (transformers/model/llama.py:24 lce_forward, model/loss_utils.py:67, ops/
  fused_linear_cross_entropy.py), what a causal LM's training forward with labels runs (:115): the
  [tokens, vocab] logits are never made. The tokens go through in chunks of
  min(next_power_of_2(ceil(BT / ceil(V / H))), BT) rows (:103-106): one [chunk, V] buffer in the hidden states'
  dtype holds each chunk's logits (:150-164; the kernel writes their gradient into it, :219), the input's gradient is
  written into its [BT, H] buffer (:108, :320) and, where the head trains, its weight's gradient added into a
  [V, H] buffer (:116) in place when the logits are bf16 or fp16 (:349-369), through a [V, H] fp32 temporary when
  they are fp32 (:375). The two gradient buffers are made in the forward and saved for backward (:574-578),
  which only scales them. torch instead keeps the logits, their fp32 copy and log-softmax, each [BT, V].
"""

from __future__ import annotations

import contextlib
import math
import types

import torch
from torch._subclasses.fake_tensor import FakeTensor

from bench.cell.kernels import liger_patch
from bench.tools.cuda_step import depart

# The rows of RMSNorm's dW buffer (rms_norm.py:534) are the device's streaming multiprocessors, so the buffer is
# device-specific: 132 on an H100/H200 SXM, the GPUs these predictions are made for (an A100 has 108, an H100 PCIe
# 114); the estimate runs on CPU, with no device to ask. The buffer is [SM_COUNT, hidden] fp32 per RMSNorm backward,
# so an A100's count moves the peak by 24 x hidden x 4 B: under a megabyte up to hidden 8192.
SM_COUNT = 132


def _fake_only(*tensors: torch.Tensor) -> None:
    if not all(isinstance(t, FakeTensor) for t in tensors):
        raise TypeError("a memory twin of a Liger kernel computes no values: it runs on fake tensors only "
                        "(bench/tools/fake_pass.py)")


class RMSNormTwin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        _fake_only(x)
        rows = x.contiguous().view(-1, x.shape[-1])  # ensure_contiguous (:652), X.view(-1, dim) (:458)
        y = torch.empty_like(rows)  # Y (:462)
        rstd = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)  # RSTD, llama casting (:465-466)
        ctx.save_for_backward(rows, weight, rstd)  # (:674)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        rows, weight, _ = ctx.saved_tensors
        dy = dy.contiguous()  # ensure_contiguous (:680)
        dw = None
        if ctx.needs_input_grad[1]:  # needs_dw (:697)
            partial = torch.empty(SM_COUNT, rows.shape[1], dtype=torch.float32, device=dy.device)  # _dW (:544)
            dw = partial.sum(dim=0).to(weight.dtype)  # (:622)
        return dy, dw  # dX written into dY (in_place, :556)


class SiLUMulTwin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        _fake_only(gate, up)
        gate, up = gate.contiguous(), up.contiguous()  # ensure_contiguous
        ctx.save_for_backward(gate, up)  # (swiglu.py:272)
        return torch.empty_like(gate)  # c (:165)

    @staticmethod
    def backward(ctx, dc):
        return ctx.saved_tensors  # the gradients written into the saved gate and up (:305-306)


class FusedLinearCrossEntropyTwin(torch.autograd.Function):
    """The mean token cross-entropy of `hidden @ weight.T` against `target` ([BT, H], [V, H], [BT]), as Liger's
    fused_linear_cross_entropy_forward allocates it on CUDA (reduction mean, no bias, no softcap: lce_forward's
    call; the hidden states and the head in one dtype, no autocast: _can_use_mm_out, :32-48, holds)."""

    @staticmethod
    def forward(ctx, hidden, weight, target):
        _fake_only(hidden)
        if hidden.dtype != weight.dtype or (torch.is_autocast_enabled(hidden.device.type)
                                            and torch.get_autocast_dtype(hidden.device.type) != weight.dtype):
            depart("Liger's fused loss over hidden states or an autocast of another dtype than the head's takes a "
                   "path of Liger's code its memory twin does not model (fused_linear_cross_entropy.py:43-47)")
        tokens, chunk_rows, chunks = chunking(*hidden.shape, weight.shape[0])
        gets_grad = hidden.requires_grad  # input_requires_grad (:89)
        grad_input = torch.zeros_like(hidden)  # (:108)
        grad_weight = torch.zeros_like(weight) if gets_grad and weight.requires_grad else None  # (:116)
        loss = torch.zeros(tokens, dtype=torch.float32, device=hidden.device)  # loss_1d (:125)
        logits = torch.empty(chunk_rows, weight.shape[0], dtype=hidden.dtype, device=hidden.device)  # (:150-154)
        for i in range(chunks):
            rows = hidden[i * chunk_rows:(i + 1) * chunk_rows]
            chunk = logits[:rows.shape[0]]
            torch.mm(rows, weight.t(), out=chunk)  # (:164); the kernel writes their gradient into them (:219)
            if gets_grad:
                torch.mm(chunk, weight, out=grad_input[i * chunk_rows:(i + 1) * chunk_rows])  # (:320)
            if grad_weight is not None and weight.dtype in (torch.bfloat16, torch.float16):
                torch.addmm(grad_weight, chunk.t(), rows, out=grad_weight)  # (:349-369)
            elif grad_weight is not None:  # fp32 logits: the fallback (:375)
                grad_weight += torch.mm(chunk.t(), rows).float()
            del chunk  # (:388): no view keeps the buffer past the loop
        del logits  # (:391)
        ctx.save_for_backward(grad_input, grad_weight)  # (:574-578)
        return loss.sum()  # already the mean: the kernel divides by the tokens counted

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight = ctx.saved_tensors  # scaled in place unless grad_output is 1 (:418-464)
        return grad_input, grad_weight, None


def chunking(tokens: int, hidden: int, vocab: int) -> tuple[int, int, int]:
    """(tokens, rows per chunk, chunks) of Liger's fused linear cross-entropy (fused_linear_cross_entropy.py:103-106,
    chunk_mem_const 1): chunks of about as many logits as the hidden states hold, a power of two rows each, at most
    all the tokens."""
    increase = math.ceil(vocab / hidden)
    rows = min(1 << max(0, math.ceil(tokens / increase) - 1).bit_length(), tokens)  # triton.next_power_of_2
    return tokens, rows, math.ceil(tokens / rows)


def _rms_norm_forward(self, hidden_states):
    return RMSNormTwin.apply(hidden_states, self.weight)


def _swiglu_forward(self, x):
    return self.down_proj(SiLUMulTwin.apply(self.gate_proj(x), self.up_proj(x)))  # transformers/swiglu.py:35


def _lce_forward(self, input_ids=None, labels=None, **kwargs):
    """lce_forward (transformers/model/llama.py:24) in training with labels (:115): the model's body, then the fused
    loss on labels shifted by padding (model/loss_utils.py:87); otherwise the model's own forward."""
    if not (self.training and labels is not None):
        return type(self).forward(self, input_ids=input_ids, labels=labels, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    hidden = self.model(input_ids=input_ids, **kwargs)[0]
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    loss = FusedLinearCrossEntropyTwin.apply(hidden.view(-1, self.config.hidden_size), self.lm_head.weight,
                                             shifted.view(-1))
    return CausalLMOutputWithPast(loss=loss)


@contextlib.contextmanager
def twins_unbound(model: torch.nn.Module):
    """Within the block, every module of `model` (an adapted model holds the one bind_twins bound) runs its own
    forward again: the torch step's, which evaluation's forwards run (no labels, no fused loss)."""
    twins = (_rms_norm_forward, _swiglu_forward, _lce_forward)
    bound = [(module, module.__dict__.pop("forward")) for module in model.modules()
             if getattr(module.__dict__.get("forward"), "__func__", None) in twins]
    try:
        yield
    finally:
        for module, forward in bound:
            module.forward = forward


def bind_twins(model: torch.nn.Module) -> None:
    """Bind the twins into `model` where apply_liger_kernel_to_llama(model=...) binds Liger's kernels
    (monkey_patch.py:302-323): every RMSNorm and MLP of the base model, and a causal LM's forward (lce_forward,
    which bench/cell/kernels.py has Liger bind for causal LMs only). ValueError for a model Liger has no patch for."""
    liger_patch(model.config.model_type)  # the model types the cell has Liger patch
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = types.MethodType(_rms_norm_forward, module)
        elif name.endswith("MLP"):
            module.forward = types.MethodType(_swiglu_forward, module)
    if type(model).__name__.endswith("ForCausalLM"):
        model.forward = types.MethodType(_lce_forward, model)
