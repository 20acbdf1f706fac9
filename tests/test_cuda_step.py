"""The estimate's step as a GPU runs it (bench/tools/cuda_step.py): CUDA's autocast lists and kernels on CPU tensors,
checked op by op against what CUDA's autocast documents, and whole against the peaks a GPU's own probe recorded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.tools.cuda_step import FP32, FP32_SET_OPT_DTYPE, LOWER_PRECISION_FP, added_ops, step_on

MEASURED = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "gpu-2026-11-30.md"


def _outputs_under(device: str) -> dict[str, torch.dtype]:
    """The dtype of each op's output on bf16 and fp32 CPU tensors in an autocast region, as on `device`."""
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    w = torch.randn(8, 8)  # fp32, as a weight under autocast
    with step_on(device, autocast=True) as region, region():
        return {"linear": F.linear(x, w).dtype, "softmax": x.softmax(-1).dtype,
                "log_softmax": F.log_softmax(x, -1).dtype, "layer_norm": F.layer_norm(x, (8,)).dtype,
                "exp": x.exp().dtype, "pow": x.pow(2).dtype, "rsqrt": x.abs().add(1).rsqrt().dtype,
                "sum": x.sum().dtype, "cumsum": x.cumsum(0).dtype, "mean": x.mean().dtype, "gelu": F.gelu(x).dtype,
                "explicit dtype": x.softmax(-1, dtype=torch.bfloat16).dtype,
                "einsum": torch.einsum("ij,jk->ik", w, w).dtype}


def test_cuda_lists_run_in_the_dtypes_cuda_autocast_documents():
    """torch.amp's "CUDA Ops that can autocast to float32" (softmax, log_softmax, layer_norm, exp, pow, rsqrt, sum,
    cumsum) run in fp32, its bf16 ones (linear, einsum) in bf16, the unlisted (mean, gelu) in their input's dtype,
    and an explicit dtype is respected; CPU autocast itself leaves the fp32 ones in bf16."""
    bf16, fp32 = torch.bfloat16, torch.float32
    assert _outputs_under("cuda") == {
        "linear": bf16, "softmax": fp32, "log_softmax": fp32, "layer_norm": fp32, "exp": fp32, "pow": fp32,
        "rsqrt": fp32, "sum": fp32, "cumsum": fp32, "mean": bf16, "gelu": bf16, "explicit dtype": bf16, "einsum": bf16}
    on_cpu = _outputs_under("cpu")
    assert (on_cpu["softmax"], on_cpu["layer_norm"], on_cpu["exp"], on_cpu["sum"]) == (bf16, bf16, bf16, bf16)


def test_the_kernels_are_registered_for_the_block_only():
    """What the block adds to the dispatcher is gone when it ends, an exception included: a process that estimates
    then trains under CPU autocast (a bf16 CPU cell) gets CPU autocast as torch ships it."""
    added = added_ops()
    assert {("fp32", "layer_norm", "default"), ("fp32_set_opt_dtype", "softmax", "int")} <= set(added)
    assert {policy for policy, *_ in added} == {"lower_precision_fp", "fp32", "fp32_set_opt_dtype", "promote",
                                               "fp32_append_dtype"}
    # every added op is one of CUDA's lists (no invented entries)
    listed = {op for op, _ in LOWER_PRECISION_FP + FP32 + FP32_SET_OPT_DTYPE} | {"norm", "addcdiv", "addcmul", "atan2",
                                                                               "bilinear", "cross", "dot", "vdot",
                                                                               "index_put", "tensordot", "scatter_add"}
    assert {op for _, op, _ in added} <= listed

    def registered() -> bool:
        return torch._C._dispatch_has_kernel_for_dispatch_key("aten::layer_norm", "AutocastCPU")

    assert not registered()
    with pytest.raises(RuntimeError, match="inside"):
        with step_on("cuda", autocast=True):
            assert registered()
            raise RuntimeError("inside")
    assert not registered()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.randn(3, dtype=torch.bfloat16).softmax(-1).dtype == torch.bfloat16


def _saved(step) -> list[torch.Tensor]:
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        step()
    return kept


def test_dropout_and_attention_keep_what_cudas_kernels_keep():
    """On "cuda" dropout keeps a 1-byte mask (the CPU's kernel: the scaled noise in the input's dtype) and sdpa with
    dropout keeps no L x L probabilities (the CPU's math kernel keeps them); the products are the same."""
    x = torch.randn(2, 4, 16, 8, requires_grad=True)

    def step():
        F.scaled_dot_product_attention(x, x, x, dropout_p=0.1).sum()
        F.dropout(x, 0.1, training=True).sum()

    def largest_square(kept) -> int:
        return sum(t.numel() for t in kept if t.shape[-2:] == (16, 16))

    on_cpu, on_cuda = _saved(step), None
    with step_on("cuda", autocast=False):
        on_cuda = _saved(step)
    after = _saved(step)  # the kernels are gone with the block
    assert largest_square(on_cpu) > 0 and largest_square(on_cuda) == 0 and largest_square(after) > 0
    assert any(t.dtype == torch.float32 and t.shape == x.shape and t.data_ptr() != x.data_ptr() for t in on_cpu)
    masks = [t for t in on_cuda if t.dtype == torch.bool]
    assert [m.shape for m in masks] == [x.shape]
    with step_on("cuda", autocast=False):  # eval mode: no dropout at all
        assert torch.equal(F.dropout(x, 0.1, training=False), x)


def _recorded_gpu_predictions() -> dict[str, int]:
    """method -> the predicted peak (MiB) the H200's own probe recorded for the RoBERTa-base-shape encoder cells of
    docs/measurements/gpu-2026-11-30.md (fp32 weights, bf16 autocast, batch 32 x 256, fused AdamW)."""
    rows = re.findall(r"^\| gpu-check-encoder \| fp32 \| ([\w-]+) \| ok \| (\d+) \|", MEASURED.read_text(), re.M)
    return {method: int(mib) for method, mib in rows}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "head-only"])
def test_the_estimate_is_what_the_gpus_own_probe_recorded(method):
    """The estimate, on the meta device with no GPU, equals to the MiB the prediction the cell's probe made on the
    H200 (a real step under real CUDA autocast and kernels). Before CUDA's step was modelled it was 1.1-2.2 times
    that (fp32, CPU's dropout and attention kernels)."""
    from bench.tools.estimate import estimate

    recorded = _recorded_gpu_predictions()
    assert len(recorded) == 10
    result = estimate("roberta-base", method, batch_size=32, seq_len=256, dtype="fp32")
    assert (result["precision"], result["compute_dtype"]) == ("auto", "bf16")
    assert round(result["memory"]["predicted_peak_bytes"] / 2**20) == recorded[method]
    in_fp32 = estimate("roberta-base", method, batch_size=32, seq_len=256, dtype="fp32", precision="fp32")
    assert in_fp32["memory"]["predicted_peak_bytes"] > result["memory"]["predicted_peak_bytes"]
