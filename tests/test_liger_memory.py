"""Liger's kernels in the memory prediction (bench/tools/liger_memory.py, `estimate --kernels liger`): the fused
loss's chunks by Liger's rule, its peak and saved bytes against closed forms, and the 1.1B LLaMA shape at 16 x 1,024
tokens against the saved bytes of torch and of Liger counted by hand, term by term."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.cell.probe import StepCounters
from bench.errors import BadInput
from bench.tools.estimate import estimate
from bench.tools.liger_memory import FusedLinearCrossEntropyTwin, RMSNormTwin, chunking

# TinyLlama's shape (benchmarks/gpu_perf.py: the MFU cells): 1.10B parameters
TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
BT, H, I, V, L = 16 * 1024, 2048, 5632, 32000, 22


def test_the_loss_is_chunked_by_liger_rule():
    # fused_linear_cross_entropy.py:96-98's own example: BT = 4096*4, V = 32000, H = 4096 -> 8, chunks of 2048
    assert chunking(4096 * 4, 4096, 32000) == (16384, 2048, 8)
    # the 1.1B shape: ceil(32000 / 2048) = 16, 16384 / 16 = 1024 rows a chunk, 16 chunks
    assert chunking(BT, H, V) == (16384, 1024, 16)
    # ceil(1000 / 64) = 16; ceil(1000 / 16) = 63 -> the next power of two, 64 rows; ceil(1000 / 64) = 16 chunks
    assert chunking(1000, 64, 1000) == (1000, 64, 16)
    assert chunking(3, 64, 32) == (3, 3, 1)  # the next power of two, 4, is cut to the 3 tokens (:105)


@pytest.mark.parametrize("dtype, weight_trains", [(torch.float32, False), (torch.float32, True),
                                                   (torch.bfloat16, True)])
def test_the_fused_loss_holds_one_chunk_of_logits_never_all_of_them(dtype, weight_trains):
    """The twin's forward alone at the 1.1B shape: its most bytes alive at once and what it saves, against the
    allocations of fused_linear_cross_entropy_forward on CUDA by hand (`size`: bytes an element)."""
    tokens, rows, chunks = chunking(BT, H, V)
    size = 4 if dtype == torch.float32 else 2
    with FakeTensorMode() as mode:
        hidden = torch.empty(BT, H, dtype=dtype, requires_grad=True)
        weight = torch.nn.Parameter(torch.empty(V, H, dtype=dtype), requires_grad=weight_trains)
        target = torch.zeros(BT, dtype=torch.long)
    with mode, StepCounters() as counters:
        FusedLinearCrossEntropyTwin.apply(hidden, weight, target)
    grad_input, loss_1d, logits = size * BT * H, 4 * BT, size * rows * V  # logits: one [chunk, V] buffer, reused
    grad_weight = size * V * H if weight_trains else 0
    # fp32 logits add each chunk's weight gradient through torch.mm(...).float(): one [V, H] fp32 at a time (:375);
    # bf16 ones add it in place (addmm, :364)
    temporary = 4 * V * H if weight_trains and dtype == torch.float32 else 0
    assert counters.peak == grad_input + loss_1d + grad_weight + logits + temporary
    assert sum(size for _, size in counters.saved) == grad_input + grad_weight
    assert rows * V == 1024 * 32000  # 1/16 of torch's [BT, V] logits, held three times (bf16, fp32, log-softmax)


def test_the_1_1b_shape_saves_what_liger_saves_term_by_term(tmp_path):
    """Saved bytes of one step, torch minus liger, bf16 weights, 16 x 1,024 tokens, counted by hand (bytes):
    - each RMSNorm whose input carries a gradient: torch saves an fp32 copy of X (4 BT H) and rstd (4 BT), and with
      a trainable weight the normalised X in bf16 (2 BT H); Liger X itself (2 BT H) and RSTD (4 BT). With LoRA the
      embeddings are frozen, so the first layer's norm saves nothing either way: 2L norms, not 2L + 1;
    - each MLP: torch saves gate, SiLU(gate) and up, Liger gate and up: SiLU(gate) less, 2 BT I;
    - the loss: torch saves the fp32 log-softmax (4 BT V), the shifted labels (8 BT) and the total weight (4), and
      with a trainable head its input (2 BT H); Liger the input's gradient (2 BT H) and, with a trainable head, the
      head's gradient (2 V H)."""
    tf.LlamaConfig(**TINYLLAMA).save_pretrained(tmp_path)
    logits_term = 4 * BT * V + 8 * BT + 4
    assert logits_term == 2_097_283_076  # the "2 GB of fp32 logits" of docs/measurements/gpu-perf-2026-11-30.md
    by_hand = {"lora": 2 * L * 2 * BT * H + L * 2 * BT * I + logits_term - 2 * BT * H,
               "full": (2 * L + 1) * 4 * BT * H + L * 2 * BT * I + logits_term - 2 * V * H}
    for method, saved_less in by_hand.items():
        torch_, liger = (estimate(str(tmp_path), method, 16, 1024, dtype="bf16", kernels=k)["memory"]
                         for k in ("torch", "liger"))
        assert torch_["activation_bytes"] - liger["activation_bytes"] == saved_less, method
        assert liger["weights_bytes"] == torch_["weights_bytes"] and liger["grad_bytes"] == torch_["grad_bytes"]
        assert liger["step_peak_bytes"] < torch_["step_peak_bytes"] - logits_term, method  # the logits' peak is gone
    assert by_hand["lora"] == 9_043_050_500 and by_hand["full"] == 12_066_095_108


def test_liger_is_refused_by_name_where_it_has_no_kernels(capsys):
    with pytest.raises(BadInput) as refused:
        estimate("tiny-encoder", "lora", 2, 16, kernels="liger")
    assert refused.value.where == "--kernels" and "no patch for model_type 'roberta'" in refused.value.message
    with pytest.raises(BadInput, match="unknown kernels 'triton'"):
        estimate("tiny-llama", "lora", 2, 16, kernels="triton")
    with pytest.raises(BadInput, match="head-only trains the LM head alone"):  # priced silently before the fix
        estimate("tiny-llama", "head-only", 2, 16, kernels="liger")
    from bench.cli import main

    assert main(["estimate", "--model", "tiny-llama", "--method", "lora", "--batch-size", "2", "--seq-len", "16",
                 "--kernels", "liger"]) == 0
    assert "liger kernels" in capsys.readouterr().out


def test_a_twin_computes_no_values_so_it_refuses_real_tensors():
    with pytest.raises(TypeError, match="runs on fake tensors only"):
        RMSNormTwin.apply(torch.ones(2, 4), torch.ones(4))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_flops_are_the_same_with_either_kernels(method, monkeypatch):
    """liger's fused loss runs the head's gradient products in its forward: the twin's forward counted them, and
    before the fix forward_per_example (what prices evaluation's forwards, which run no fused loss) was 9,535,488
    for LoRA of tiny-llama at 4 x 32 against torch's 7,503,872. The liger estimate counts it on the model it built,
    its twins unbound for that pass (it built the model a second time before), the head training (full) or not."""
    import bench.tools.estimate as estimating

    builds, build = [], estimating._built
    monkeypatch.setattr(estimating, "_built", lambda *args, **kwargs: builds.append(args) or build(*args, **kwargs))
    torch_, liger = (estimate("tiny-llama", method, 4, 32, kernels=k)["flops"] for k in ("torch", "liger"))
    assert liger == torch_ and len(builds) == 2  # one each
    assert method != "lora" or torch_["forward_per_example"] == 7_503_872


def test_the_runners_prediction_of_a_liger_cell_is_the_liger_estimate(tmp_path):
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.tools.plan_cost import predicted_memory

    path = tmp_path / "liger.yaml"
    path.write_text("name: liger\nmethods: [lora]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\nseeds: [1]\n"
                    "train: {batch_size: 4, max_steps: 2, max_length: 32, kernels: liger}\n")
    (cell,) = grid.expand(load_suite(str(path)), threads=1)
    liger = estimate("tiny-llama", "lora", 4, 32, kernels="liger", task=cell.task)["memory"]
    assert predicted_memory(cell) == liger  # what --gpus packs it by
    torch_ = estimate("tiny-llama", "lora", 4, 32, task=cell.task)["memory"]
    assert liger["step_peak_bytes"] < torch_["step_peak_bytes"]


def test_gpu_perfs_liger_saving_is_predicted_only_where_the_estimate_runs_the_cells_path():
    """fp32 weights under bf16 autocast take liger's fused loss down another path, which its twin does not model:
    full fine-tuning's saving is measured only; LoRA's (bf16 weights) predicted too."""
    from benchmarks.gpu_perf import GIB, savings

    def row(peak_gib: float) -> dict:
        return {"memory": {"device_peak_allocated_bytes": int(peak_gib * GIB)}}

    rows = {("full", None): row(60), ("full", "liger"): row(48), ("lora", None): row(30), ("lora", "liger"): row(22)}
    predictions = {("full", "torch"): 70 * GIB, ("full", "liger"): 55 * GIB, ("lora", "torch"): 31 * GIB,
                   ("lora", "liger"): 22.5 * GIB}
    assert savings(rows, predictions) == [
        "full: liger's peak saving, measured 12.00 GiB; not predicted for fp32 weights under autocast (Liger's path "
        "there is not modelled)", "lora: liger's peak saving, predicted 8.50 GiB, measured 8.00 GiB"]
