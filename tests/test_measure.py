"""Measurements against independent computations."""

import contextlib

import pytest
import torch
from safetensors.torch import save

from bench import tiny
from bench.cell.batching import batches, collate
from bench.cell.measure import (
    PeakMemory,
    optimizer_state_bytes,
    predicted_peak,
    stored_size,
    weight_bytes,
)
from bench.cell.objectives import objective_for
from bench.cell.probe import (
    COST_MODEL,
    StepMeasure,
    forward_flops_per_example,
    instrumented_step,
    measure_step,
    probe_batch,
    step_peak_bytes,
    training_flops,
)
from bench.cell.train import train
from bench.config import TrainConfig
from bench.optimizers import update_bytes
from bench.tensors import count_params
from tests import closed_forms
from tests.adapting import adapt, token_batch

H, F, DEPTH = tiny.WIDTH, tiny.FFN, tiny.DEPTH


def test_tied_weights_count_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "other": torch.nn.Linear(4, 2)})
    model["other"].weight.requires_grad_(False)
    counts = count_params(model)
    assert counts["total"] == 10 * 4 + 4 * 2 + 2
    assert counts["trainable"] == 10 * 4 + 2
    assert counts["trainable_pct"] == 100 * 42 / 50


def test_weight_bytes_in_each_dtype_tied_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    frozen = torch.nn.Linear(4, 3).to(torch.bfloat16).requires_grad_(False)
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "frozen": frozen})
    assert weight_bytes(model) == {"weights_bytes": 40 * 4 + (12 + 3) * 2, "trainable_bytes": 40 * 4}


def test_stored_counts_parameters_and_bytes_count_indices_too():
    values, index = torch.randn(5), torch.arange(5, dtype=torch.int32)
    out = stored_size({"w.values": values, "w.indices": index})
    assert out["stored"] == 5 and out["stored_bytes"] == len(save({"w.values": values, "w.indices": index}))


def test_nothing_to_store_is_zero_bytes_not_an_empty_files_header():
    assert stored_size({}) == {"stored": 0, "stored_bytes": 0}
    assert len(save({})) > 0  # what an empty safetensors file would have counted


def test_stored_size_is_the_safetensors_file():
    a, b = torch.randn(3, 5), torch.randn(7)
    state = {"a": a, "b": b, "tied": a}
    out = stored_size(state)
    assert out["stored"] == 15 + 7
    assert out["stored_bytes"] == len(save({"a": a, "b": b}))


def test_predicted_peak_is_the_busier_phase_or_null():
    parts = {"weights_bytes": 1, "optimizer_bytes": 4, "step_peak_bytes": 16, "grad_bytes": 2, "activation_bytes": 8,
             "eval_peak_bytes": 12}
    assert predicted_peak(parts, trains=True) == 21  # gradients and activations are inside the step's peak
    assert predicted_peak({**parts, "eval_peak_bytes": 20}, trains=True) == 25  # evaluating beside the optimizer
    assert predicted_peak({**parts, "step_peak_bytes": None}, trains=False) == 13  # zero-shot, ICL: no optimizer
    assert predicted_peak({**parts, "eval_peak_bytes": None}, trains=True, evaluates=False) == 21  # a stage
    assert predicted_peak({**parts, "optimizer_bytes": None}, trains=True) is None
    assert predicted_peak({**parts, "eval_peak_bytes": None}, trains=True) is None  # a multi-task cell


def test_step_peak_is_the_busier_of_backward_and_the_update():
    step = StepMeasure(activation_bytes=100, grad_bytes=50, live_peaks={(): 130}, batch_bytes=3, forward_flops=0,
                       backward_flops=0, rows=1, positions=1, tokens=1)
    assert step_peak_bytes(step, update_bytes("foreach", [10])) == 3 + 130  # forward and backward
    assert step_peak_bytes(step, update_bytes("foreach", [300, 200])) == 3 + 50 + 500  # gradients + temporaries
    assert step_peak_bytes(step, update_bytes("fused", [300, 200])) == 3 + 130  # a fused update holds none
    assert update_bytes("for-loop", [300, 200]) == 600 and update_bytes("for-loop", [100, 100, 100]) == 300


def test_lora_optimizer_state_is_two_moments_and_a_step_counter_per_tensor():
    bundle, adapted = adapt("tiny-encoder", "lora", seed=1)
    feats = [{"input_ids": [1, 7, 8, 9, 2], "labels": i % 2} for i in range(8)]
    result = train(adapted, feats, objective_for("lm", bundle, "classification"),
                   TrainConfig(max_steps=1, batch_size=4), seed=0, device="cpu", quiet=True)
    lora, head = closed_forms.lora_q_v(H, DEPTH), closed_forms.TINY_HEAD  # LoRA on q and v, r=8
    tensors = closed_forms.lora_q_v_tensors(DEPTH) + closed_forms.ROBERTA_HEAD_TENSORS
    assert count_params(adapted.model)["trainable"] == lora + head
    assert result.optimizer_bytes == 2 * 4 * (lora + head) + 4 * tensors


def test_optimizer_state_bytes_dedupes_shared_tensors():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones_like(p)
    opt.step()
    assert optimizer_state_bytes(opt) == 2 * 6 * 4 + 4


METHODS = ("head-only", "lora", "full", "prompt-tuning", "bitfit", "ia3")


@pytest.fixture(scope="module")
def steps() -> dict:
    """Per method: the tiny encoder's trainable count and two instrumented steps on the same batch."""
    out = {}
    for method in METHODS:
        model = adapt("tiny-encoder", method, seed=1)[1].model
        out[method] = (count_params(model)["trainable"], *(
            measure_step(model, token_batch(), "cpu", contextlib.nullcontext) for _ in range(2)))
        assert all(p.grad is None for p in model.parameters())  # the step's gradients are dropped
    return out


@pytest.mark.parametrize("method", METHODS)
def test_instrumented_step_is_deterministic(steps, method):
    _, first, second = steps[method]
    assert first == second and first.activation_bytes > 0


@pytest.mark.parametrize("method", METHODS)
def test_grad_bytes_are_the_trainable_parameters_in_fp32(steps, method):
    trainable, step, _ = steps[method]
    assert step.grad_bytes == 4 * trainable


def test_activation_bytes_order_methods(steps):
    """What a step keeps for backward: a linear probe keeps the head's input only; LoRA keeps the
    inputs of the adapted projections beside what backpropagation through the body needs; full
    fine-tuning keeps the inputs of every linear layer. Prompt tuning keeps less per token than full
    fine-tuning (frozen linear layers need no input), but its 20 virtual tokens more than double a
    16-token batch, so at the same batch it keeps more (at 128 tokens it keeps less: see
    docs/measurement.md)."""
    saved = {m: steps[m][1].activation_bytes for m in METHODS}
    assert 100 * saved["head-only"] < saved["lora"] < saved["full"] < saved["prompt-tuning"]


def test_measure_step_does_not_change_training():
    """Training after the instrumented step ends with the very same weights (dropout included)."""
    feats = [{"input_ids": [1] + [5 + (i * 7 + j) % 50 for j in range(6 + i % 3)] + [2], "labels": i % 2}
             for i in range(16)]
    finals = []
    for probe_first in (False, True):
        torch.manual_seed(0)
        bundle, adapted = adapt("tiny-encoder", "lora", seed=1)
        objective = objective_for("lm", bundle, "classification")
        if probe_first:
            measure_step(adapted.model, probe_batch(feats, 8, 0, objective.collate), "cpu",
                         contextlib.nullcontext)
        result = train(adapted, feats, objective, TrainConfig(max_steps=3, batch_size=8), 0, "cpu", quiet=True)
        finals.append(([p.detach().clone() for p in adapted.model.parameters()], result.losses))
    assert finals[0][1] == finals[1][1]
    assert all(torch.equal(a, b) for a, b in zip(finals[0][0], finals[1][0]))


def test_probe_batch_is_the_first_batch_at_the_longest_width():
    feats = [{"input_ids": list(range(2 + i)), "labels": [7] * (1 + i % 4)} for i in range(10)]
    batch = probe_batch(feats, 3, seed=5, collate_fn=lambda rows: collate(rows, 0))
    first = next(batches(feats, 3, seed=5))
    assert batch["input_ids"].shape == (3, 11) and batch["labels"].shape == (3, 4)
    assert batch["attention_mask"].sum(1).tolist() == [len(f["input_ids"]) for f in first]


def test_forward_flops_of_the_tiny_encoder_match_its_matrix_products():
    """2 × multiply-accumulates: q, k, v, o and the two FFN projections per token and layer, the two
    attention products (L² per head dimension), the head on the first token; embeddings are lookups."""
    _, adapted = adapt("tiny-encoder", "full", seed=1)
    rows, length = 4, 12
    step = instrumented_step(adapted.model, token_batch(rows, length))
    tokens = rows * length
    layer = 2 * tokens * (4 * H * H + 2 * H * F) + 2 * 2 * rows * length * length * H
    head = 2 * rows * (H * H + H * 2)
    assert step.forward_flops == DEPTH * layer + head
    # backward: gradients for inputs and for weights, each as costly as the forward product, except
    # that no gradient flows into the token ids (the first layer still needs its input gradient for
    # the embeddings, which train)
    assert step.backward_flops == 2 * step.forward_flops


def test_flop_scaling_and_cost_model():
    step = StepMeasure(activation_bytes=0, grad_bytes=0, live_peaks={}, batch_bytes=0, forward_flops=1000,
                       backward_flops=2000, rows=4, positions=100, tokens=80)
    assert forward_flops_per_example(step, 50, "decoder") == {"forward_per_example": 250,
                                                              "cost_model_forward_per_example": 2 * 50 * 80 // 4}
    assert training_flops(step, 50, "encoder-decoder", positions=1000, tokens=700) == {
        "train_total": 30 * 1000, "cost_model_train_total": 3 * 50 * 700}
    assert COST_MODEL == {"encoder-decoder": (1, 3), "decoder": (2, 6), "encoder": (2, 6)}


def test_peak_memory_window_sees_an_allocation():
    with PeakMemory("cpu") as outer:
        pass
    with PeakMemory("cpu") as peak:
        block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
        del block
    assert peak.source == "cpu_peak_rss_bytes" and peak.peak_bytes == peak.figures["cpu_peak_rss_bytes"]
    assert peak.peak_bytes - outer.peak_bytes >= 60 * 2 ** 20
    assert peak.figures["device_peak_allocated_bytes"] is None and peak.figures["nvml_peak_bytes"] is None


def test_peak_memory_leaves_out_excluded_work():
    with PeakMemory("cpu") as outer:
        pass
    with PeakMemory("cpu") as peak:
        with peak.excluded():
            block = torch.ones(256 * 2 ** 20 // 4)  # 256 MiB, touched and freed inside the exclusion
            del block
    assert peak.peak_bytes - outer.peak_bytes < 128 * 2 ** 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peaks_see_an_allocation_outside_exclusions():
    with PeakMemory("cuda") as peak:
        block = torch.ones(256 * 2 ** 20 // 4, device="cuda")
        del block
        with peak.excluded():
            block = torch.ones(1024 * 2 ** 20 // 4, device="cuda")
            del block
    allocated = peak.figures["device_peak_allocated_bytes"]
    assert 256 * 2 ** 20 <= allocated < 1024 * 2 ** 20
    assert peak.figures["device_peak_reserved_bytes"] >= allocated
    assert peak.source == "device_peak_allocated_bytes" and peak.peak_bytes == allocated


def test_utilisation_against_the_datasheet_peaks():
    from bench.cell.measure import peak_flops, utilisation

    assert peak_flops("NVIDIA H200", "bf16") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12  # not the SXM part's figure
    assert peak_flops("NVIDIA H200 NVL", "bf16") == 835.5e12 and peak_flops("NVIDIA H100 NVL", "fp32") == 60e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert peak_flops("cpu", "fp32") is None and peak_flops(None, "bf16") is None
    assert utilisation(10 ** 15, 2.0, "NVIDIA A100-SXM4-80GB", "bf16") == {"train_flops_per_s": 5e14,
                                                                          "mfu": 5e14 / 312e12}
    assert utilisation(10 ** 15, 2.0, "cpu", "fp32") == {"train_flops_per_s": 5e14, "mfu": None}
    assert utilisation(None, 2.0, "NVIDIA H200", "bf16") == {"train_flops_per_s": None, "mfu": None}


def test_inference_speed_is_the_median_single_prediction_and_the_batched_rate(monkeypatch):
    """On a clock that only prediction moves (10 ms per call plus 2 ms per example), the latency is the median
    of one-example calls after a warm-up, and the rate is 2 × batch examples over one batched pass."""
    from bench.cell import evaluate, measure
    from bench.figures import LATENCY_EXAMPLES
    from bench.tasks.features import EvalSet

    now, calls = [0.0], []

    def predict_group(bundle, model, sample, task, batch_size, device, autocast):  # what evaluate.predict runs
        calls.append((len(sample.features), batch_size))
        now[0] += 0.010 + 0.002 * len(sample.features) + (0.5 if len(calls) == 1 else 0)  # a slow first call
        return [0] * len(sample.features)

    monkeypatch.setattr(evaluate, "_predict_group", predict_group)
    monkeypatch.setattr(measure.time, "perf_counter", lambda: now[0])
    evalset = EvalSet([{"input_ids": [i]} for i in range(50)], list(range(50)))
    model = torch.nn.Identity()
    speed = measure.inference_speed(None, model, evalset, None, 16, "cpu", None)
    assert calls == [(1, 1)] * (1 + LATENCY_EXAMPLES) + [(32, 16)]
    assert speed["infer_latency_s"] == pytest.approx(0.012)
    assert speed["infer_examples_per_s"] == pytest.approx(32 / (0.010 + 0.002 * 32))
    few = EvalSet([{"input_ids": [1]}] * 3, [0] * 3)  # fewer examples than asked for: all of them
    calls.clear()
    measure.inference_speed(None, model, few, None, 16, "cpu", None)
    assert calls == [(1, 1)] * 4 + [(3, 16)]
    calls.clear()  # the final evaluation timed the batched examples already: they are not predicted again
    timed = measure.inference_speed(None, model, evalset, None, 16, "cpu", None, batched_s=0.25)
    assert calls == [(1, 1)] * (1 + LATENCY_EXAMPLES) and timed["infer_examples_per_s"] == 32 / 0.25


def test_the_stopwatch_waits_for_its_device_at_both_ends(monkeypatch):
    """On CUDA a timed block must include the work it queued: the device is synchronised before the clock
    starts and before it stops (here recorded, with a clock that only the block moves)."""
    from bench.cell import measure

    now, events = [0.0], []
    monkeypatch.setattr(measure, "_synchronize", lambda device: events.append(("sync", device)))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: events.append(("clock", now[0])) or now[0])
    watch = measure.Stopwatch("cuda:1")
    with watch():
        now[0] += 2.5
    assert events == [("sync", "cuda:1"), ("clock", 0.0), ("sync", "cuda:1"), ("clock", 2.5)]
    assert watch.seconds == 2.5


@pytest.mark.parametrize("n", [50, 32, 20])
def test_the_final_evaluation_times_the_group_it_predicts_first(monkeypatch, n):
    """TimedPrediction predicts one example alone (a warm-up, untimed), then evaluates: the first 2 × batch
    examples as a group of their own, timed, then the rest, each example once more, the predictions in order;
    its seconds are those of the first group alone."""
    from bench.cell import evaluate, measure
    from bench.tasks.features import EvalSet

    now, groups = [0.0], []

    def predict_group(bundle, model, sample, task, batch_size, device, autocast):
        groups.append([f["input_ids"][0] for f in sample.features])
        now[0] += 0.010 + 0.002 * len(sample.features)
        return [i * 10 for i in groups[-1]]

    monkeypatch.setattr(evaluate, "_predict_group", predict_group)
    monkeypatch.setattr(measure.time, "perf_counter", lambda: now[0])
    evalset = EvalSet([{"input_ids": [i]} for i in range(n)], list(range(n)), [[0, 1]] * n)
    timed = measure.TimedPrediction()
    assert timed(None, torch.nn.Identity(), evalset, None, 16, "cpu", None) == [i * 10 for i in range(n)]
    ids = list(range(n))
    assert groups == [[0], ids[:32]] + ([ids[32:]] if n > 32 else [])
    assert timed.seconds == pytest.approx(0.010 + 0.002 * min(n, 32))


@pytest.mark.parametrize("model_name,task_name", [("tiny-encoder", "synth-polarity"), ("tiny-t5", "synth-choice"),
                                                  ("tiny-gpt2", "synth-digits")])
def test_the_timed_final_evaluation_predicts_what_one_pass_predicts(model_name, task_name, tiny_bundle):
    """On real tiny models, a classifier head, rank classification and generation: the timed final evaluation
    predicts exactly what any evaluation predicts (the same batches)."""
    from bench.cell import measure
    from bench.cell.evaluate import predict
    from bench.tasks.data import load_rows
    from bench.tasks.features import eval_features
    from bench.tasks.registry import builtin_tasks

    task = builtin_tasks()[task_name]
    bundle = tiny_bundle(model_name, task=task)
    evalset = eval_features(task, bundle, load_rows(task, "validation")[:23], 32)
    one_pass = predict(bundle, bundle.model, evalset, task, 4, "cpu")
    timed = measure.TimedPrediction()
    assert timed(bundle, bundle.model, evalset, task, 4, "cpu", contextlib.nullcontext) == one_pass
    assert timed.seconds > 0
