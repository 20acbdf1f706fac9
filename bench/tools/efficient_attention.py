"""CUDA's memory-efficient attention kernel on the estimate's fake CPU tensors: sdpa whose mask needs a gradient.

A mask that requires grad (T5's trained relative position bias, which transformers adds into sdpa's attn_mask) is
taken by none of CUDA's other fused kernels: flash takes no mask, and cuDNN's kernel, like the CPU's flash kernel,
turns such a mask away (sdp_utils_cpp.h, check_attn_mask_shape). CUDA's selection (cuda/sdp_utils.cpp,
select_sdp_backend) then runs the memory-efficient kernel where it takes the inputs (`takes`), else its math kernel;
the CPU runs its math kernel, which keeps the L x L probabilities of every head. `attention` does what the efficient
branch of sdpa's composite (attention.cpp, scaled_dot_product_attention) does:

- preprocess_mask: a mask whose strides (but the last, which must be 1) are not multiples of 8 elements is padded on
  its last dimension by 8 - S mod 8 elements (constant_pad_nd: a new tensor, which the kernel then keeps) and sliced
  back to S; then it is expanded to (B, H, L, S), a view;
- aten._scaled_dot_product_efficient_attention, whose autograd node keeps q, k, v, the mask, the output (B, H, L, Ev,
  laid out as B, L, H, Ev), the log-sum-exp (B, H, L rounded up to 32; fp32) and the dropout's philox seed and offset
  (two 8-byte scalars: host memory on CUDA, counted here); its backward (..._efficient_attention_backward) returns
  the gradients of q, k, v and of the mask: (B, H, L, S rounded up to 16) in the mask's dtype, sliced to S, which
  autograd then sums over what the expansion broadcast. What the kernels allocate and free within one call (the
  backward's workspace: on sm80 and newer an fp32 accumulator of dQ, 4 B H L D bytes, 24 MiB for t5-base at
  32 x 256) is not followed, as for every fused kernel (bench.cell.probe.LiveBytes): the packer's OTHER_BYTES and
  margin cover it (bench/run/packing.py).

Both operators run as torch's meta kernels (torch/_meta_registrations.py) under the fake mode, whose CPU fakes they
accept; the FLOP counter counts them as every fused attention kernel (bench.cell.probe.ATTENTION_FLOPS). They have no
CPU kernel, so real tensors never reach them (bench/tools/cuda_step.py keeps the math kernel there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_ALIGNMENT = 8  # preprocess_mask's mem_eff_alignment, in elements
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # the kernel's on sm80 and newer


def gemm_alignment(dtype: torch.dtype) -> int:
    """minimum_gemm_alignment on sm80 and newer (the GPUs a bf16 cell runs on): 128 bits of `dtype`, at least 4."""
    return max(4, 128 // torch.finfo(dtype).bits)


def takes(query, key, value, mask: torch.Tensor) -> bool:
    """Whether CUDA's memory-efficient kernel takes these dense inputs (can_use_mem_efficient_attention on sm80 and
    newer): 4-D q, k, v of one batch, one head count and one of its dtypes, the mask's too (under autocast it is
    cast with them); q and k of one head dimension, that and
    v's a multiple of the GEMM alignment; storage offsets aligned alike; last dimensions (the mask's too) of stride 1;
    no empty sequence. Not grouped heads: in this torch only flash and math take them (sdpa's documentation)."""
    if not all(torch.is_tensor(t) and t.dim() == 4 for t in (query, key, value)):
        return False
    if query.dtype not in _DTYPES or not key.dtype == value.dtype == mask.dtype == query.dtype:
        return False  # the kernel checks the bias's dtype too ("should match query's dtype")
    align = gemm_alignment(query.dtype)
    head, head_v = query.size(-1), value.size(-1)
    return (key.size(-1) == head and 0 < head and head % align == 0 and 0 < head_v and head_v % align == 0
            and all(t.stride(-1) == 1 and t.storage_offset() % align == 0 for t in (query, key, value))
            and mask.stride(-1) == 1 and query.size(2) > 0 and key.size(2) > 0
            and query.size(0) == key.size(0) == value.size(0) and query.size(1) == key.size(1) == value.size(1))


def _aligned(mask: torch.Tensor) -> bool:
    """preprocess_mask's aligned_tensor: every stride but the last a multiple of MASK_ALIGNMENT, the last 1."""
    return all(s % MASK_ALIGNMENT == 0 for s in mask.stride()[:-1]) and mask.stride(-1) == 1


def attention(query, key, value, mask: torch.Tensor, dropout_p: float, is_causal: bool, scale) -> torch.Tensor:
    """sdpa's output as CUDA's composite computes it on the memory-efficient kernel (the module's docstring), on fake
    tensors `takes` accepts."""
    if not _aligned(mask):
        size = mask.size(-1)
        mask = F.pad(mask, (0, MASK_ALIGNMENT - size % MASK_ALIGNMENT))[..., :size]
    mask = mask.expand(query.size(0), query.size(1), query.size(2), key.size(2))
    log_sumexp = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, mask, log_sumexp, dropout_p, is_causal, scale=scale)[0]
