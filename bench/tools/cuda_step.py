"""The training step of a GPU cell on the estimate's fake CPU tensors: CUDA's autocast lists and CUDA's kernels.

A cell on a GPU runs its forward under `torch.autocast("cuda", bfloat16)` (precision `auto` or `bf16`:
bench/cell/train.py). Under autocast a matrix product casts its inputs to bf16 before autograd records it, so it
saves them in bf16; an fp32 weight that trains is cast once per forward and its copy cached until autocast exits;
ops that need range (softmax, layer norm, exp, pow, sums) run in fp32. And CUDA runs dropout and attention with
other kernels than a CPU, which keep other tensors for backward (_register_cuda_kernels). What the step saves and
holds at once depends on all of it: for the RoBERTa-base cells of docs/measurements/estimate-vs-gpu-2026-12-07.md
the step as a CPU runs it, in fp32, is 1.4 to 2.7 times the GPU's.

The estimate's fake tensors claim the CPU (bench/tools/fake_pass.py), where CUDA autocast cannot run: autograd
refuses a CUDA tensor in a torch without CUDA. So the fake step runs under CPU autocast, whose machinery is
CUDA's (aten/src/ATen/autocast_mode.h, the same WrapFunction_ casts and cached_cast), with CUDA's op lists:
CPU autocast registers its own, shorter lists (autocast_mode.cpp, TORCH_LIBRARY_IMPL(aten, AutocastCPU)); within
step_on every op of CUDA's lists that CPU autocast leaves to fall through gets a kernel on the AutocastCPU
key doing what CUDA's does for it. The lists are AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE and AT_FORALL_PROMOTE of autocast_mode.h
(PyTorch 2.13, the lock's; tests/test_cuda_step.py checks them against the AutocastCUDA kernels this torch
registers, which its CPU build registers too). Where CPU autocast lists an op under another policy than CUDA's it
keeps its own: the losses (cross_entropy_loss in fp32 on CPU; on CUDA its log_softmax and nll_loss each in fp32,
which computes and saves the same fp32 tensors) and ops no Transformer's step calls (grid_sampler,
binary_cross_entropy).

What differs from a CUDA step, and is left so: a bf16 cast made by one of the added lower-precision ops (einsum,
mv, addmv, addr, chain_matmul, linalg_multi_dot, the RNN cells, convolution) is not cached, where CUDA caches an
fp32 leaf weight's copy (only a weight such an op reads twice in one forward would be held twice); kernels' own
choices (cuBLAS workspaces, flash attention's layout) are outside any autocast policy (docs/measurement.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch._subclasses.fake_tensor import FakeTensor

from bench.tools import efficient_attention

# CUDA's lists, as (op, overload) pairs; "default" is an op's overload without a name.
LOWER_PRECISION_FP = (
    ("_convolution", "deprecated"), ("_convolution", "default"), ("conv1d", "default"), ("conv2d", "default"),
    ("conv3d", "default"), ("conv_tbc", "default"), ("conv_transpose1d", "default"), ("conv_transpose2d", "input"),
    ("conv_transpose3d", "input"), ("convolution", "default"), ("prelu", "default"), ("addmm", "default"),
    ("addmv", "default"), ("addr", "default"), ("matmul", "default"), ("einsum", "default"), ("mm", "default"),
    ("mv", "default"), ("linalg_vecdot", "default"), ("linear", "default"), ("addbmm", "default"),
    ("baddbmm", "default"), ("bmm", "default"), ("chain_matmul", "default"), ("linalg_multi_dot", "default"),
    ("_thnn_fused_lstm_cell", "default"), ("_thnn_fused_gru_cell", "default"), ("lstm_cell", "default"),
    ("gru_cell", "default"), ("rnn_tanh_cell", "default"), ("rnn_relu_cell", "default"),
    ("_scaled_dot_product_flash_attention", "default"), ("scaled_dot_product_attention", "default"))
FP32 = (
    ("acos", "default"), ("asin", "default"), ("cosh", "default"), ("erfinv", "default"), ("exp", "default"),
    ("expm1", "default"), ("log", "default"), ("log10", "default"), ("log2", "default"), ("log1p", "default"),
    ("reciprocal", "default"), ("rsqrt", "default"), ("sinh", "default"), ("tan", "default"),
    ("pow", "Tensor_Scalar"), ("pow", "Tensor_Tensor"), ("pow", "Scalar"), ("softplus", "default"),
    ("layer_norm", "default"), ("native_layer_norm", "default"), ("rms_norm", "default"), ("group_norm", "default"),
    ("frobenius_norm", "dim"), ("nuclear_norm", "default"), ("nuclear_norm", "dim"), ("cosine_similarity", "default"),
    ("poisson_nll_loss", "default"), ("cosine_embedding_loss", "default"), ("nll_loss", "default"),
    ("nll_loss2d", "default"), ("hinge_embedding_loss", "default"), ("kl_div", "default"), ("l1_loss", "default"),
    ("smooth_l1_loss", "default"), ("huber_loss", "default"), ("mse_loss", "default"),
    ("margin_ranking_loss", "default"), ("multilabel_margin_loss", "default"), ("soft_margin_loss", "default"),
    ("triplet_margin_loss", "default"), ("multi_margin_loss", "default"),
    ("binary_cross_entropy_with_logits", "default"), ("dist", "default"), ("pdist", "default"), ("cdist", "default"),
    ("renorm", "default"), ("logsumexp", "default"), ("upsample_nearest1d", "default"),
    ("_upsample_nearest_exact1d", "default"), ("upsample_nearest2d", "default"),
    ("_upsample_nearest_exact2d", "default"), ("upsample_nearest3d", "default"),
    ("_upsample_nearest_exact3d", "default"), ("upsample_linear1d", "default"), ("upsample_bilinear2d", "default"),
    ("_upsample_bilinear2d_aa", "default"), ("upsample_trilinear3d", "default"), ("upsample_bicubic2d", "default"),
    ("_upsample_bicubic2d_aa", "default"))
FP32_SET_OPT_DTYPE = (
    ("prod", "default"), ("prod", "dim_int"), ("softmax", "int"), ("log_softmax", "int"), ("cumprod", "default"),
    ("cumsum", "default"), ("linalg_vector_norm", "default"), ("linalg_matrix_norm", "default"),
    ("linalg_matrix_norm", "str_ord"), ("sum", "default"), ("sum", "dim_IntList"))
# fp32_append_dtype: the overload without a dtype redispatched to the one with it, dtype fp32
FP32_APPEND_DTYPE = {("norm", "Scalar"): ("norm", "ScalarOpt_dtype"),
                     ("norm", "ScalarOpt_dim"): ("norm", "ScalarOpt_dim_dtype")}
PROMOTE = (("addcdiv", "default"), ("addcmul", "default"), ("atan2", "default"), ("bilinear", "default"),
           ("cross", "default"), ("dot", "default"), ("vdot", "default"), ("grid_sampler", "default"),
           ("index_put", "default"), ("tensordot", "default"), ("scatter_add", "default"))

_KEY = "AutocastCPU"


def _overload(op: str, overload: str):
    return getattr(getattr(torch.ops.aten, op), overload, None)


def _eligible(t) -> bool:
    """As autocast's is_eligible on the CPU: a defined floating tensor of the CPU, not fp64."""
    return isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.is_floating_point() \
        and t.dtype != torch.float64


def _cast(value, dtype: torch.dtype):
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value.to(dtype) if _eligible(value) and value.dtype != dtype else value


def _widest(values) -> torch.dtype:
    """The promote policy's type: fp32 if any eligible argument is fp32, else the autocast dtype."""
    flat = [t for v in values for t in (v if isinstance(v, (list, tuple)) else [v])]
    return torch.float32 if any(_eligible(t) and t.dtype == torch.float32 for t in flat) \
        else torch.get_autocast_dtype("cpu")


def _with_defaults(op, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """`args` with the positional arguments the dispatcher left out (trailing ones equal to their defaults) put back
    from `op`'s schema, and those given by name moved in among them."""
    args, kwargs = list(args), dict(kwargs)
    for argument in op._schema.arguments[len(args):]:
        if argument.kwarg_only:
            break
        args.append(kwargs.pop(argument.name) if argument.name in kwargs else argument.default_value)
    return tuple(args), kwargs


def _kernel(policy: str, op, redispatch=None):
    """A Python kernel on the AutocastCPU key doing what CUDA's WrapFunction_ does for `policy`, then running `op`
    (or `redispatch`, fp32_append_dtype's) with autocast excluded, as CUDA's wrapper does."""
    dtype_at = next((i for i, a in enumerate(op._schema.arguments) if a.name == "dtype"), None)

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            if policy == "lower_precision_fp":
                target = torch.get_autocast_dtype("cpu")
                return op(*_cast(args, target), **{k: _cast(v, target) for k, v in kwargs.items()})
            if policy == "fp32":
                return op(*_cast(args, torch.float32), **{k: _cast(v, torch.float32) for k, v in kwargs.items()})
            if policy == "promote":
                target = _widest([*args, *kwargs.values()])
                return op(*_cast(args, target), **{k: _cast(v, target) for k, v in kwargs.items()})
            if policy == "fp32_append_dtype":  # every positional argument given: the dtype overload has no defaults
                args, kwargs = _with_defaults(op, args, kwargs)
                return redispatch(*args, **kwargs, dtype=torch.float32 if _eligible(args[0]) else args[0].dtype)
            if _eligible(args[0]):  # fp32_set_opt_dtype: an explicit dtype is respected
                if dtype_at is not None and dtype_at < len(args):
                    if args[dtype_at] is None:
                        args = (*args[:dtype_at], torch.float32, *args[dtype_at + 1:])
                elif kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
            return op(*args, **kwargs)
    return kernel


def added_ops() -> list[tuple[str, str, str]]:
    """(policy, op, overload) of every op of CUDA's lists that this torch has and CPU autocast does not register:
    what step_on adds."""
    lists = (("lower_precision_fp", LOWER_PRECISION_FP), ("fp32", FP32), ("fp32_set_opt_dtype", FP32_SET_OPT_DTYPE),
             ("promote", PROMOTE), ("fp32_append_dtype", tuple(FP32_APPEND_DTYPE)))
    added = []
    for policy, ops in lists:
        for op, overload in ops:
            found = _overload(op, overload)
            if found is not None and not torch._C._dispatch_has_kernel_for_dispatch_key(found.name(), _KEY):
                added.append((policy, op, overload))
    return added


def _register_cuda_policy(library) -> None:
    """CPU autocast casting as CUDA autocast does (the module's docstring): kernels on the AutocastCPU key for the
    ops of CUDA's lists CPU autocast leaves alone. Outside an autocast region they do nothing (its key is then
    off)."""
    for policy, op, overload in added_ops():
        found, redispatch = _overload(op, overload), FP32_APPEND_DTYPE.get((op, overload))
        library.impl(found.name().split("::", 1)[1], _kernel(policy, found, redispatch and _overload(*redispatch)),
                     _KEY)


def _argument(op, args: tuple, kwargs: dict, name: str, default):
    at = next(i for i, a in enumerate(op._schema.arguments) if a.name == name)
    return args[at] if at < len(args) else kwargs.get(name, default)


_DEPARTURES: ContextVar[list[str] | None] = ContextVar("departures", default=None)


@contextlib.contextmanager
def departures() -> Iterator[list[str]]:
    """Within the block, the list of where the modelled step is known to depart from a GPU's (`depart`), each
    said once: the estimate's `memory.not_modelled`, whose prediction is then no lower bound of the GPU's peak."""
    token = _DEPARTURES.set([])
    try:
        yield _DEPARTURES.get()
    finally:
        _DEPARTURES.reset(token)


def depart(reason: str) -> None:
    """Say, within `departures`, that the step runs other than a GPU's here (elsewhere: nothing)."""
    found = _DEPARTURES.get()
    if found is not None and reason not in found:
        found.append(reason)


def _register_cuda_kernels(library) -> None:
    """Where CUDA runs another kernel than the CPU, and the two keep different tensors for backward, the call goes
    to a CPU kernel that keeps what CUDA's does and computes the same products (kernels on the AutogradCPU key, above
    the CPU's own choice, so autograd records the kernel chosen; gradient checkpointing's forward again included):

    - dropout in training: CUDA's fused kernel (native_dropout) keeps a 1-byte mask; the CPU's keeps the scaled
      noise in the input's dtype (2 or 4 bytes an element). Here it is native_dropout, which the CPU has too.
    - sdpa in training: CUDA's fused kernels (flash, or memory-efficient where flash cannot take the inputs) keep
      the inputs, output and log-sum-exp, never the L x L probabilities, dropout included (drawn inside the kernel
      from a saved seed). CPU's flash kernel keeps the same but takes no dropout, and with dropout the CPU runs its
      math kernel, which keeps the probabilities: here sdpa runs without its dropout, which changes no FLOP and
      nothing kept. A mask that needs a gradient (T5's trained position bias) no flash kernel takes: CUDA runs its
      memory-efficient kernel, here its twin (bench/tools/efficient_attention.py) on the fake tensors, or where that
      kernel does not take the inputs its math kernel, here the CPU's, dropout and all; on real tensors, which the
      twin cannot run, the math kernel keeps the probabilities CUDA's does not: that step departs (`depart`: its
      estimate runs high). Grouped-query attention in fp32 (enable_gqa, no mask): only
      CUDA's flash kernel takes grouped heads and it takes no fp32, so CUDA runs its math kernel, which keeps the
      probabilities; the CPU's flash kernel would not, so here it is the math kernel too, dropout and all."""
    dropout, native_dropout = torch.ops.aten.dropout.default, torch.ops.aten.native_dropout.default
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    math_attention = torch.ops.aten._scaled_dot_product_attention_math.default

    def fused_dropout(*args, **kwargs):
        x, p, train = (_argument(dropout, args, kwargs, name, None) for name in ("input", "p", "train"))
        if train and 0 < p < 1 and x.numel() > 0:  # as CUDA's is_fused_kernel_acceptable
            return native_dropout(x, p, train)[0]
        return dropout.decompose(*args, **kwargs)

    def attention_without_dropout(*args, **kwargs):
        query, key, value, mask, dropout_p, is_causal, scale = (
            _argument(sdpa, args, kwargs, name, default) for name, default in (
                ("query", None), ("key", None), ("value", None), ("attn_mask", None), ("dropout_p", 0.0),
                ("is_causal", False), ("scale", None)))
        if _argument(sdpa, args, kwargs, "enable_gqa", False) and query.dtype == torch.float32:
            return math_attention(*args, **kwargs)[0]
        if torch.is_tensor(mask) and mask.requires_grad:
            if not efficient_attention.takes(query, key, value, mask):
                return math_attention(*args, **kwargs)[0]
            if isinstance(query, FakeTensor):
                return efficient_attention.attention(query, key, value, mask, dropout_p, is_causal, scale)
            depart("sdpa with a mask that needs a gradient (a trained position bias) on real tensors runs the CPU's "
                   "math kernel, which keeps the L x L probabilities CUDA's memory-efficient kernel does not: high")
        at = next(i for i, a in enumerate(sdpa._schema.arguments) if a.name == "dropout_p")
        if at < len(args):
            args = (*args[:at], 0.0, *args[at + 1:])
        else:
            kwargs = {**kwargs, "dropout_p": 0.0}
        return sdpa.decompose(*args, **kwargs)

    library.impl("dropout", fused_dropout, "AutogradCPU")
    library.impl("scaled_dot_product_attention", attention_without_dropout, "AutogradCPU")


# The kernels are registered for the whole process: one thread's step at a time runs under them. (Any other thread
# would too, while they last: the estimate runs in the runner's main thread or a forked pricing worker.)
_REGISTERING = threading.RLock()


@contextlib.contextmanager
def step_on(device: str, autocast: bool):
    """Within the block, a training step on the fake pass's CPU tensors runs as on `device` ("cuda" or "cpu"): on
    "cuda", with CUDA's kernels for dropout and sdpa and, with `autocast`, CUDA's autocast policy (registered on the
    dispatcher while the block lasts, removed when it ends). Yields the autocast region of the step's forward (a
    context factory: bf16 CPU autocast, or none)."""
    region = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    if device != "cuda":
        yield region
        return
    with _REGISTERING:
        library = torch.library.Library("aten", "IMPL")
        try:
            _register_cuda_kernels(library)
            if autocast:
                _register_cuda_policy(library)
            yield region
        finally:
            library._destroy()
