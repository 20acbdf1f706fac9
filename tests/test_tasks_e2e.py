"""Each task type end to end on tiny models: regression, generation, rank classification (few-shot,
several templates, T-Few's objective, in-context learning)."""

import json
import statistics

import pytest

from bench.cli import main

pytestmark = pytest.mark.slow


def run(write_suite, tmp_path, text: str) -> list[dict]:
    results = tmp_path / "results"
    assert main(["run", "--suite", str(write_suite(text)), "--results", str(results), "--quiet"]) == 0
    return [json.loads(p.read_text()) for p in sorted((results / "t").glob("*.json"))]


def test_regression_and_generation(write_suite, tmp_path):
    records = run(write_suite, tmp_path, """\
name: t
methods: [{name: full, train: {lr: 1.0e-3}}]
models: [tiny-encoder, tiny-t5]
tasks: [synth-intensity, synth-digits]
train: {batch_size: 16, max_steps: 15, max_length: 32, max_eval_samples: 32}
exclude: [{model: tiny-encoder, task: synth-digits}]
""")
    by = {(r["cell"]["model"], r["cell"]["task"]): r for r in records}
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    assert set(by["tiny-encoder", "synth-intensity"]["scores"]["metrics"]) == {"pearson", "spearman"}
    assert set(by["tiny-t5", "synth-intensity"]["scores"]["metrics"]) == {"pearson", "spearman"}  # T5 + regression head
    digits = by["tiny-t5", "synth-digits"]
    assert set(digits["scores"]["metrics"]) == {"exact_match", "bleu", "chrf"} and digits["scores"]["main_metric"] == "chrf"
    assert digits["flops"]["inference_per_example"] > 0  # the decoding loop, counted


def test_fewshot_rank_classification_tfew_and_icl(write_suite, tmp_path):
    """The whole T-Few recipe offline (the fewshot suite's settings on tiny models and a synthetic
    multiple-choice task with two templates and length normalisation), then its cost table."""
    records = run(write_suite, tmp_path, """\
name: t
methods: [{name: lora, train: {lr: 5.0e-3}}, icl, zero-shot]
models: [tiny-t5, tiny-gpt2]
tasks: [synth-choice]
seeds: [1, 2]
train: {shots: 8, objective: tfew, batch_size: 4, max_steps: 6, max_length: 256, max_eval_samples: 24,
        optimizer: adafactor-tfew, balanced_batches: true, redraw_templates: true}
""")
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    assert all(r["cell"]["config"]["train"]["optimizer"] == "adafactor-tfew" for r in records)
    assert all(r["cell"]["config"]["train"]["redraw_templates"] for r in records)
    from bench.report import write_report
    from tests.test_report import md_rows

    write_report("t", tmp_path / "results", tmp_path / "reports", ["md"])
    cost = md_rows((tmp_path / "reports" / "t" / "report.md").read_text(), "Few-shot: cost and accuracy")
    shots = {row.split(" | ")[1]: row.split(" | ")[3] for row in cost}
    assert shots == {"icl": "8", "lora": "8", "zero-shot": "0"}, cost
    records = [r for r in records if r["cell"]["label"] != "zero-shot"]
    ids = {(r["cell"]["label"], r["cell"]["model"], r["cell"]["seed"]): r["train"]["example_ids"] for r in records}
    for model in ("tiny-t5", "tiny-gpt2"):
        assert ids["lora", model, 1] == ids["icl", model, 1] and len(ids["lora", model, 1]) == 8
        assert ids["lora", model, 1] != ids["lora", model, 2]  # another seed, another draw
    for r in records:
        per_template = r["scores"]["per_template"]
        assert len(per_template) == 2  # the task's two templates
        assert r["scores"]["metrics"]["accuracy"] == statistics.median(t["metrics"]["accuracy"] for t in per_template)
    lora = next(r for r in records if r["cell"]["label"] == "lora")
    icl = next(r for r in records if r["cell"]["label"] == "icl" and r["cell"]["model"] == lora["cell"]["model"])
    assert lora["train"]["steps"] == 6 and icl["train"].get("steps") is None
    assert icl["params"]["stored"] == 0 and icl["params"]["stored_bytes"] > 4 * 8 * 10  # 8 demonstrations' ids
    # eight solved demonstrations in every prompt make in-context learning the costly one at inference
    assert icl["flops"]["inference_per_example"] > 3 * lora["flops"]["inference_per_example"]
