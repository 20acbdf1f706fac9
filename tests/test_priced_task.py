"""The pricing (estimate, the dry-run's FLOPs, the memory a scheduler is asked for) builds a cell's model and method
with the cell's task, as the cell does (bench/tools/priced_task.py): a mixture's router rows and heads, a masked-LM
stage's head and trained parts."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.tools import plan_cost
from bench.tools.estimate import estimate
from tests import closed_forms

MORE_TASKS = """\
tasks:
  - {name: synth-polarity-b, description: "synth-polarity, another draw", type: classification,
     source: {synthetic: polarity, n_train: 400, n_eval: 50, seed: 1}, text: [sentence], label: label,
     labels: [negative, positive], metrics: [accuracy], main_metric: accuracy}
  - {name: synth-polarity-c, description: "synth-polarity, a third draw", type: classification,
     source: {synthetic: polarity, n_train: 400, n_eval: 50, seed: 2}, text: [sentence], label: label,
     labels: [negative, positive], metrics: [accuracy], main_metric: accuracy}
"""

FIVE = """\
name: five
task_files: [more.yaml]
methods: [poly]
models: [tiny-encoder]
mixtures:
  - name: five-mix
    tasks: [synth-polarity, synth-intensity, synth-xpolarity, synth-polarity-b, synth-polarity-c]
    mixing: {rule: proportional, cap: 8}
tasks: [five-mix, synth-polarity]
seeds: [1]
train: {batch_size: 4, max_steps: 1, max_length: 32, eval_batch_size: 32, max_eval_samples: 8, max_train_samples: 8}
"""


def five_cells(write_suite) -> dict:
    write_suite(MORE_TASKS, "more.yaml")
    return {c.task.name: c for c in grid.expand(load_suite(str(write_suite(FIVE))))}


def poly_closed_form(tasks: int) -> int:
    """Poly's default on the tiny encoder's q and v: 4 LoRA skills of rank 8 each, a router row of 4 per task."""
    return sum(4 * 8 * (fan_in + fan_out) + tasks * 4 for fan_in, fan_out in
               closed_forms.tiny_adapted_projections("roberta"))


def priced(cell) -> dict:
    return estimate(cell.model.name, cell.method, cell.train.batch_size, cell.train.max_length,
                    task=cell.task)


def test_a_mixture_cell_is_priced_with_a_router_row_and_a_head_per_task(write_suite):
    cells = five_cells(write_suite)
    mixed, single = priced(cells["five-mix"]), priced(cells["synth-polarity"])
    assert mixed["params"]["method"] == poly_closed_form(5)
    assert single["params"]["method"] == poly_closed_form(1)
    # a head per task: two-label heads but synth-intensity's one output
    heads = 4 * closed_forms.TINY_HEAD + closed_forms.TINY_HEAD - (closed_forms.H + 1)
    assert mixed["params"]["trainable"] - mixed["params"]["method"] == heads
    assert plan_cost.shape_of(cells["five-mix"]) != plan_cost.shape_of(cells["synth-polarity"])


def test_a_mixture_s_member_evaluations_are_priced_through_the_mixture_s_model(write_suite):
    """Each member's rows through the model the cell trained (its heads, its router): no shape of a member's own."""
    mixed = five_cells(write_suite)["five-mix"]
    known: dict = {}
    flops, how = plan_cost.eval_flops(mixed, known)
    assert flops > 0 and how.count("rows × 1 pass") == 5
    assert [key for key in known if key[0] == "step"] == [plan_cost.shape_of(mixed)]


def test_a_text_to_text_mixture_is_priced_with_its_router_rows():
    """On T5 (no heads: the LM head serves every task) the router has a row per task; each row of the fake batch is
    routed to its own task through the suite's loss (a row's task past the router's rows would be refused)."""
    from bench.tasks.mixture import mixture_spec
    from bench.tasks.registry import builtin_tasks

    registry = builtin_tasks()
    task = mixture_spec("t", "", [registry["synth-polarity"], registry["synth-choice"]],
                        {"rule": "proportional", "cap": 8}, scored=True)
    routed = estimate("tiny-t5", "poly", 4, 16, task=task)["params"]["method"]
    projections = closed_forms.tiny_adapted_projections("t5")
    assert routed == sum(4 * 8 * (fan_in + fan_out) + 2 * 4 for fan_in, fan_out in projections)


@pytest.mark.slow
def test_the_price_of_a_mixture_cell_is_what_the_real_cell_records(tmp_path, write_suite):
    cells = five_cells(write_suite)
    results = tmp_path / "results"
    assert main(["run", "--suite", str(tmp_path / "suite.yaml"), "--results", str(results), "--quiet",
                 "--threads", "1", "--tasks", "five-mix"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (results / "five").glob("*.json")]
    assert record["status"] == "ok", record["error"]
    params = priced(cells["five-mix"])["params"]
    assert {k: record["params"][k] for k in params} == params
    assert record["params"]["method"] == poly_closed_form(5)
    memory = plan_cost.predicted_memory(cells["five-mix"])
    for key in ("weights_bytes", "trainable_bytes", "grad_bytes", "optimizer_bytes"):
        assert memory[key] == record["memory"][key]


MLM_STAGE = """\
name: mx
stages:
  - {name: lang-en, method: madx, tasks: [synth-xpolarity], objective: mlm, train: {max_steps: 2}}
methods: [{name: madx, init_from: lang-en}]
models: [tiny-encoder]
tasks: [synth-xpolarity]
seeds: [1]
train: {batch_size: 4, max_steps: 2, max_length: 24}
"""


def test_a_masked_lm_stage_is_priced_with_its_head_and_the_parts_it_trains(write_suite):
    """MAD-X's language stage trains the language adapter and the invertible adapter under the MLM head; its task
    cell the task adapter and the classifier head (test_madx's closed forms)."""
    cells = {c.label: c for c in grid.expand(load_suite(str(write_suite(MLM_STAGE))))}
    stage, task = priced(cells["stage:lang-en"]), priced(cells["madx"])
    H = closed_forms.H
    language = 2 * closed_forms.bottleneck(H, H // 2) + 2 * (
        closed_forms.linear(H // 2, H // 4) + closed_forms.linear(H // 4, H // 2))
    assert stage["head"] == "mlm" and stage["params"]["trainable"] == language
    assert task["head"] == "classifier"
    assert task["params"]["trainable"] == closed_forms.tiny_trainable("madx", "roberta", 0) + closed_forms.TINY_HEAD


POOLED = """\
name: pooled
methods: [lora]
models: [tiny-bert]
tasks: [synth-polarity]
seeds: [1]
train: {batch_size: 4, max_steps: 1, max_length: 32, pooling: POOLING}
"""


def test_a_cell_is_priced_with_its_pooling(write_suite, monkeypatch, tmp_path):
    """Mean pooling replaces BERT's pooler (a frozen H×H dense layer with bias over [CLS]) by the mean: the priced
    weights lose it, each example's forward its H×H product (2H² FLOPs), and the training step, the pooler frozen
    under LoRA, that product in the forward and its input gradient in the backward, for each of the batch's rows."""
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))  # priced here, never read from a cache
    cells = {}
    for pooling in ("cls", "mean"):
        (cells[pooling],) = grid.expand(load_suite(str(write_suite(POOLED.replace("POOLING", pooling)))))
        assert cells[pooling].train.pooling == pooling
    assert plan_cost.shape_of(cells["cls"]) != plan_cost.shape_of(cells["mean"])
    (cls_step, cls_forward, _, _), (mean_step, mean_forward, _, _) = [plan_cost._step_flops(c) for c in cells.values()]
    h, rows = closed_forms.H, cells["cls"].train.batch_size
    assert cls_forward - mean_forward == 2 * h * h
    assert cls_step - mean_step == 2 * rows * 2 * h * h
    weights = {pooling: plan_cost.predicted_memory(cell)["weights_bytes"] for pooling, cell in cells.items()}
    assert weights["cls"] - weights["mean"] == 4 * (h * h + h)  # fp32
