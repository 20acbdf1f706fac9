"""The estimate's step as a GPU runs it (bench/tools/cuda_step.py): CUDA's autocast lists and kernels on CPU tensors,
checked op by op against what CUDA's autocast documents, and whole against the peaks a GPU's own probe recorded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.tools.cuda_step import (
    FP32,
    FP32_APPEND_DTYPE,
    FP32_SET_OPT_DTYPE,
    LOWER_PRECISION_FP,
    PROMOTE,
    added_ops,
    step_on,
)

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


def test_the_lists_are_the_ops_this_torch_autocasts_on_cuda():
    """The lists are CUDA autocast's as this torch registers them (its CPU build has the AutocastCUDA kernels too):
    a list that missed an op, named one that is not there or misspelled an overload fails here."""
    listed = {f"aten::{op}" + ("" if overload == "default" else f".{overload}")
              for op, overload in LOWER_PRECISION_FP + FP32 + FP32_SET_OPT_DTYPE + PROMOTE + tuple(FP32_APPEND_DTYPE)}
    registered = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    # binary_cross_entropy: banned under autocast (an error); cudnn's convolutions: kernels no CPU op reaches
    assert listed == registered - {"aten::binary_cross_entropy", "aten::cudnn_convolution",
                                   "aten::cudnn_convolution_transpose"}


def test_norm_runs_in_fp32_with_its_defaults_left_out():
    """fp32_append_dtype: norm's overloads without a dtype go to those with one, whose arguments have no defaults:
    the ones the call left out are put back."""
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    with step_on("cuda", autocast=True) as region, region():
        assert torch.ops.aten.norm.Scalar(x).dtype == torch.float32
        assert torch.ops.aten.norm.ScalarOpt_dim(x, 2, [1]).dtype == torch.float32
        assert torch.norm_except_dim(x, 2, -1).dtype == torch.float32
        assert torch.allclose(torch.ops.aten.norm.Scalar(x), x.float().norm())


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
    H200 (a real step under real CUDA autocast and kernels). Before the GPU's step was modelled it was 1.4-2.7 times
    that (fp32, CPU's dropout and attention kernels)."""
    from bench.tools.estimate import estimate

    recorded = _recorded_gpu_predictions()
    assert len(recorded) == 10
    result = estimate("roberta-base", method, batch_size=32, seq_len=256, dtype="fp32")
    assert (result["precision"], result["compute_dtype"]) == ("auto", "bf16")
    # those records predate the evaluation's phase: their prediction is training's (head-only's evaluation of 64 rows
    # is now its busier phase)
    m = result["memory"]
    assert round((m["weights_bytes"] + m["optimizer_bytes"] + m["step_peak_bytes"]) / 2**20) == recorded[method]
    in_fp32 = estimate("roberta-base", method, batch_size=32, seq_len=256, dtype="fp32", precision="fp32")
    assert in_fp32["memory"]["step_peak_bytes"] > m["step_peak_bytes"]


@pytest.mark.parametrize("model, method, settings, said", [
    ("tiny-t5", "full", {}, None),  # T5's trained position bias: CUDA's memory-efficient kernel's twin
    ("tiny-llama", "lora", {"dtype": "fp32", "kernels": "liger"}, "Liger's fused loss"),
    ("tiny-llama", "lora", {"dtype": "bf16", "kernels": "liger"}, None),
    ("tiny-encoder", "full", {"dtype": "fp32"}, None)])
def test_the_estimate_says_where_its_step_departs_from_a_gpus(model, method, settings, said):
    """`memory.not_modelled`: what the packer then takes as no lower bound of the peak (it refuses nothing by it)."""
    from bench.tools.estimate import estimate

    not_modelled = estimate(model, method, batch_size=2, seq_len=8, **settings)["memory"]["not_modelled"]
    assert [reason[:len(said)] for reason in not_modelled] == ([said] if said else [])


def test_grouped_query_attention_in_fp32_keeps_the_probabilities_as_cudas_math_kernel_does():
    """Only CUDA's flash kernel takes grouped heads (enable_gqa) and it takes no fp32: CUDA runs its math kernel,
    which keeps the L x L probabilities; in bf16 its flash kernel keeps none."""
    q = torch.randn(1, 4, 16, 8, requires_grad=True)
    kv = torch.randn(1, 2, 16, 8, requires_grad=True)

    def squares(dtype) -> int:
        with step_on("cuda", autocast=False):
            kept = _saved(lambda: F.scaled_dot_product_attention(q.to(dtype), kv.to(dtype), kv.to(dtype),
                                                                 enable_gqa=True))
        return sum(t.numel() for t in kept if t.shape[-2:] == (16, 16))

    assert squares(torch.float32) > 0 and squares(torch.bfloat16) == 0


def test_a_cpu_job_is_predicted_as_a_cpu_runs_it(monkeypatch, tmp_path):
    """A Slurm job without GPUs asks for host memory by its step on the CPU: in fp32 with the CPU's kernels, not
    under a GPU's autocast (bench/run/executors/slurm.py)."""
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.tools.estimate import estimate
    from bench.tools.plan_cost import predicted_memory

    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    cell = next(c for c in grid.expand(load_suite("ci")) if c.method == "full" and c.model.name == "tiny-encoder")
    on_cpu, on_gpu = predicted_memory(cell, step_device="cpu"), predicted_memory(cell)
    assert on_cpu["predicted_peak_bytes"] == estimate(
        cell.model.name, "full", cell.train.batch_size, cell.train.max_length, dtype=cell.train.weights_dtype,
        task=cell.task, pooling=cell.train.pooling, step_device="cpu",
        eval_batch_size=cell.train.eval_batch_size)["memory"]["predicted_peak_bytes"]
    assert on_cpu["predicted_peak_bytes"] > on_gpu["predicted_peak_bytes"]
    assert predicted_memory(cell, step_device="cpu") == on_cpu  # from the cache, under its own key
