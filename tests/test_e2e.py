"""End to end through the CLI: grids run in isolated cell processes and land in the store."""

import json

import pytest
import torch

from bench import tiny
from bench.cli import main
from tests import closed_forms
from tests.conftest import TINY_SUITE

pytestmark = pytest.mark.slow
# Cells run on the GPU where there is one: expectations come from the device, not from this machine.
CUDA = torch.cuda.is_available()
PEAK_SOURCE = "device_peak_allocated_bytes" if CUDA else "cpu_peak_rss_bytes"
DEVICE = torch.cuda.get_device_properties(0).name if CUDA else "cpu"


def records(results, suite="tiny") -> dict:
    out = {}
    for path in (results / suite).glob("*.json"):
        r = json.loads(path.read_text())
        out[r["cell"]["label"]] = r
    return out


def tiny_encoder_params() -> tuple[int, int]:
    """(body, head) parameter counts of the tiny RoBERTa classifier, from its dimensions."""
    return closed_forms.tiny_body_params("roberta", len(tiny.tokenizer())), closed_forms.TINY_HEAD


def test_two_cell_grid_records_and_rerun(tmp_path, write_suite, capsys):
    text = TINY_SUITE.replace("max_steps: 20,", "max_steps: 20, eval_every: 10, keep_best: true,") + \
        "selection: {heldout: 0.1}\n"
    suite, results = write_suite(text), tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    assert "2 ok" in capsys.readouterr().out
    recs = records(results)
    body, head = tiny_encoder_params()
    full, lora = recs["full"], recs["lora"]
    for r in (full, lora):
        assert r["status"] == "ok" and r["error"] is None
        assert set(r["scores"]["metrics"]) == {"accuracy", "f1"} and r["scores"]["main_metric"] == "accuracy"
        assert 0 <= r["scores"]["metrics"]["accuracy"] <= 100
        assert r["memory"]["peak_source"] == PEAK_SOURCE and r["memory"]["peak_bytes"] > 0
        assert r["time"]["train_s"] > 0 and r["train"]["steps"] == 20
        assert [e["step"] for e in r["train"]["evals"]] == [10, 20]  # every 10 steps, then the end
        best = max(r["train"]["evals"], key=lambda e: e["score"])
        # the best weights on the selection split are kept; the reported split played no part in choosing them
        assert r["train"]["evals_on"] == "selection"
        assert r["scores"]["selection"]["accuracy"] == pytest.approx(best["score"])
        assert r["scores"]["n_selection_examples"] == 64  # max_eval_samples of the 10 % held out of the training rows
        assert r["env"]["torch"] and r["env"]["device"] == DEVICE
        assert r["train"]["attention"] == "sdpa"  # transformers' choice for `auto`
        assert r["train"]["compute_dtype"] == ("bf16" if CUDA else "fp32")  # precision: auto
        assert r["train"]["optimizer_update"] == ("fused" if CUDA else "for-loop")  # AdamW
        assert r["time"]["train_flops_per_s"] == pytest.approx(r["flops"]["train_total"] / r["time"]["train_s"])
        mfu = r["time"]["mfu"]
        assert mfu is None if not CUDA else (mfu is None or 0 < mfu < 1)  # no datasheet peak for a CPU
        assert r["time"]["infer_latency_s"] > 0 and r["time"]["infer_examples_per_s"] > 0
    # LoRA can fold its update into the weights, full fine-tuning has nothing to fold
    assert lora["time"]["infer_latency_merged_s"] > 0 and lora["time"]["infer_examples_per_s_merged"] > 0
    assert full["time"]["infer_latency_merged_s"] is None and full["time"]["infer_examples_per_s_merged"] is None
    assert full["params"]["total"] == full["params"]["trainable"] == body + head
    lora_params = closed_forms.lora_q_v(tiny.WIDTH, tiny.DEPTH)  # q and v, r=8
    assert lora["params"]["trainable"] == lora_params + head
    assert lora["params"]["total"] == body + head + lora_params + head  # peft keeps the original head too
    assert (lora["params"]["method"], full["params"]["method"]) == (lora_params, body)  # the head is not the method's
    assert lora["params"]["method_pct"] == pytest.approx(100 * lora_params / body)
    assert full["params"]["method_pct"] == 100.0
    assert lora["params"]["stored"] == lora_params + head
    assert lora["params"]["trainable_pct"] == pytest.approx(100 * (lora_params + head) / lora["params"]["total"])
    # memory breakdown, in fp32; AdamW keeps two moments per element and a 4-byte step counter per tensor
    tensors = {"full": closed_forms.roberta_tensors(tiny.DEPTH) + closed_forms.ROBERTA_HEAD_TENSORS,
               "lora": closed_forms.lora_q_v_tensors(tiny.DEPTH) + closed_forms.ROBERTA_HEAD_TENSORS}
    for label, r in (("full", full), ("lora", lora)):
        m, trainable = r["memory"], r["params"]["trainable"]
        assert m["weights_bytes"] == 4 * r["params"]["total"]
        assert m["trainable_bytes"] == m["grad_bytes"] == 4 * trainable
        assert m["optimizer_bytes"] == 2 * 4 * trainable + 4 * tensors[label]
        # the busier phase: a training step, or an evaluation batch (a classifier's: measured, never null)
        assert m["predicted_peak_bytes"] == m["weights_bytes"] + m["optimizer_bytes"] + max(m["step_peak_bytes"],
                                                                                            m["eval_peak_bytes"])
        # every saved activation is alive when forward ends, every gradient when backward ends
        assert m["step_peak_bytes"] >= max(m["grad_bytes"], m["activation_bytes"])
        if CUDA:  # the allocator's peak holds at least what lives through every step after the first
            assert m["device_peak_allocated_bytes"] == m["peak_bytes"] >= sum(
                m[k] for k in ("weights_bytes", "grad_bytes", "optimizer_bytes"))
            assert m["device_peak_reserved_bytes"] >= m["device_peak_allocated_bytes"]
            assert m["eval_peak_allocated_bytes"] >= m["weights_bytes"]
            assert m["device_other_bytes"] >= 0  # the buffers, the workspaces of the probe's matrix products
        else:
            assert m["cpu_peak_rss_bytes"] == m["peak_bytes"] > m["predicted_peak_bytes"]  # RSS holds the interpreter
            assert all(m[k] is None for k in ("device_peak_allocated_bytes", "device_peak_reserved_bytes",
                                              "eval_peak_allocated_bytes", "nvml_peak_bytes", "device_other_bytes"))
        f = r["flops"]
        assert f["cost_model_train_total"] == 6 * r["params"]["total"] * r["train"]["tokens"]  # encoder: 6N per token
        assert 0 < f["inference_per_example"] < f["train_total"]
        assert r["time"]["step_s_median"] > 0 and r["time"]["train_tokens_per_s"] > 0
        assert r["env"]["seed"] == 1
    assert 0 < lora["memory"]["activation_bytes"] < full["memory"]["activation_bytes"]
    before = {p.name: p.stat().st_mtime_ns for p in (results / "tiny").glob("*.json")}
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    assert "nothing run; 2 already recorded" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in (results / "tiny").glob("*.json")}
    assert main(["report", "--suite", "tiny", "--results", str(results), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "tiny" / "report.md").read_text()
    assert "### tiny-encoder: methods compared" in report and "| reparameterized | lora |" in report


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path, write_suite, capsys):
    text = TINY_SUITE.replace("  - {name: full, train: {lr: 1.0e-3}}\n", "").replace(
        "  - {name: lora, train: {lr: 5.0e-3}}\n",
        "  - {name: lora, label: broken, overrides: {target_modules: [no_such_module]}}\n"
        "  - {name: full, train: {lr: 1.0e-3}}\n")
    results = tmp_path / "results"
    assert main(["run", "--suite", str(write_suite(text)), "--results", str(results), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "1 failed" in captured.out and "1 ok" in captured.out and "broken" in captured.err
    recs = records(results)
    assert recs["full"]["status"] == "ok"
    broken = recs["broken"]
    assert broken["status"] == "failed" and broken["error"]["type"] == "NoMatchingPeftModuleError"
    assert "No modules were targeted" in broken["error"]["message"] and broken["error"]["where"]
    assert broken["params"]["trainable"] is None and broken["scores"]["metrics"] == {}  # null, not 0

    # --retry-failed reruns only the failed cell, and the old record goes to history
    assert main(["run", "--suite", str(write_suite(text)), "--results", str(results), "--quiet",
                 "--retry-failed"]) == 0
    assert "1 failed; 1 already recorded" in capsys.readouterr().out
    assert len(list((results / "tiny" / "history").glob("*.json"))) == 1


def test_unsupported_cell(tmp_path, write_suite):
    text = TINY_SUITE.replace("tasks: [synth-polarity]", "tasks: [synth-digits]")
    results = tmp_path / "results"
    assert main(["run", "--suite", str(write_suite(text)), "--results", str(results), "--quiet",
                 "--methods", "full"]) == 0
    rec = records(results)["full"]
    assert rec["status"] == "unsupported" and "cannot do generation" in rec["error"]["message"]


def test_a_hanging_cell_times_out(tmp_path, write_suite):
    # 10^6 steps cannot finish within a 2 s limit; the executor kills the process and records it
    text = TINY_SUITE.replace("max_steps: 20", "max_steps: 1000000") + "cell_timeout_s: 2\n"
    results = tmp_path / "results"
    assert main(["run", "--suite", str(write_suite(text)), "--results", str(results), "--quiet",
                 "--methods", "full"]) == 0
    rec = records(results)["full"]
    assert rec["status"] == "timeout" and "2 s limit" in rec["error"]["message"]


def test_a_bf16_weights_cell_trains_and_records_its_dtype(tmp_path, write_suite, capsys):
    """weights_dtype: bf16 loads every weight in bf16 (the adapters peft adds stay fp32), on any device."""
    text = TINY_SUITE.replace("train: {batch_size", "train: {weights_dtype: bf16, batch_size")
    results = tmp_path / "results"
    assert main(["run", "--suite", str(write_suite(text)), "--results", str(results), "--quiet"]) == 0
    recs = records(results)
    body, head = tiny_encoder_params()
    full, lora = recs["full"], recs["lora"]
    for r in (full, lora):
        assert r["status"] == "ok" and r["train"]["weights_dtype"] == "bf16"
        assert r["cell"]["config"]["train"]["weights_dtype"] == "bf16"
    assert full["memory"]["weights_bytes"] == 2 * (body + head)
    lora_params = closed_forms.lora_q_v(tiny.WIDTH, tiny.DEPTH)
    assert lora["params"]["trainable"] == lora_params + head
    # peft keeps the LoRA factors in fp32; its trainable copy of the head (modules_to_save) stays bf16
    assert lora["memory"]["weights_bytes"] == 2 * (lora["params"]["total"] - lora_params) + 4 * lora_params


def test_a_finished_run_leaves_no_process_behind(tmp_path):
    """`peft-bench run` waits at exit for the fork server and multiprocessing's resource tracker, which would
    otherwise outlive it for a moment in its process group (what a job scheduler or `wait` watches)."""
    import os
    import subprocess
    import sys

    suite = tmp_path / "tiny.yaml"
    one_cell = TINY_SUITE.replace("max_steps: 20", "max_steps: 2")
    one_cell = one_cell.replace("  - {name: full, train: {lr: 1.0e-3}}\n", "")
    suite.write_text(one_cell)
    run = subprocess.Popen([sys.executable, "-m", "bench", "run", "--suite", str(suite), "--results",
                            str(tmp_path / "r"), "--quiet"], start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    _, err = run.communicate()
    assert run.returncode == 0, err
    with pytest.raises(ProcessLookupError):  # the run's process group (its pid) has no member left
        os.killpg(run.pid, 0)
