"""Multi-task cells (a suite's `mixtures:`): the suite's checks, the mixture's draw, a head per task and the mixed
loss against each row computed alone, the per-task scores and their average, and a tiny suite end to end."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from bench.cell import multitask
from bench.cli import main
from bench.config import TrainConfig
from bench.figures import TASK_AVERAGE, TASK_SCORE, figure
from bench.layers import task_heads
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.tasks.prepare import mixture_data
from bench.tasks.registry import builtin_tasks
from bench.tasks.spec import TaskSpec
from tests import closed_forms
from tests.adapting import build_bundle
from tests.refusals import refused

MIXED = """\
name: mixed
methods: [lora, poly]
models: [tiny-encoder]
mixtures:
  - {name: synth-mix, tasks: [synth-polarity, synth-intensity], mixing: {rule: proportional, cap: 12}}
tasks: [synth-polarity, synth-mix]
seeds: [1]
train: {batch_size: 4, max_steps: 2, max_length: 32, eval_batch_size: 32, max_eval_samples: 16, max_train_samples: 20}
"""


def mixture(write_suite) -> TaskSpec:
    return load_suite(str(write_suite(MIXED))).task_registry["synth-mix"]


def test_a_mixture_is_a_task_of_the_suite_whose_id_holds_its_members(write_suite):
    suite = load_suite(str(write_suite(MIXED)))
    cells = grid.expand(suite)
    (mixed,) = [c for c in cells if c.task.name == "synth-mix" and c.label == "lora"]
    assert [m.name for m in mixed.task.members] == ["synth-polarity", "synth-intensity"]
    assert mixed.task.type == "classification" and mixed.task.main_metric == "task_average"
    assert mixed.config["task"]["members"][0]["name"] == "synth-polarity"
    other = grid.expand(load_suite(str(write_suite(MIXED.replace("cap: 12", "cap: 10"), "other.yaml"))))
    assert mixed.id not in {c.id for c in other}  # the mixing rule is in the id
    assert {c.id for c in cells if c.task.name == "synth-polarity"} == \
        {c.id for c in other if c.task.name == "synth-polarity"}


@pytest.mark.parametrize("change,message", [
    (lambda t: t.replace("synth-intensity]", "synth-intnsity]"), "unknown task 'synth-intnsity'"),
    (lambda t: t.replace("[synth-polarity, synth-intensity]", "[synth-polarity]"), "two or more different"),
    (lambda t: t.replace("name: synth-mix,", "name: synth-polarity,"), "already a task name"),
    (lambda t: t.replace("rule: proportional", "rule: temperature"), "needs 'temperature' > 0"),
    (lambda t: t.replace("max_steps: 2,", "max_steps: 2, eval_every: 1,"), "one per task"),
    (lambda t: t.replace("mixing:", "mixin:"), "unknown mixture key 'mixin'"),
    (lambda t: t.replace("tasks: [synth-polarity, synth-mix]", "tasks: [synth-polarity, {name: synth-mix, train: "
                         "{keep_best: true}}]"), "one per task"),
])
def test_bad_mixtures_are_one_error_with_the_line(write_suite, change, message):
    refused(write_suite(change(MIXED)), message)


def test_a_regression_member_in_a_text_to_text_models_mixture_is_refused_before_any_cell(write_suite):
    """A text-to-text model trains every member of a mixture on its text target, and a regression task has none (it
    is scored through a regression head): such a cell failed in setup, after the grid had been planned and priced.
    A stage's mixture is refused alike; an encoder (a head per member) still takes it."""
    from tests.refusals import planned

    t5 = MIXED.replace("models: [tiny-encoder]", "models: [tiny-encoder, tiny-t5]")
    error = refused(write_suite(t5), "mixture 'synth-mix' on tiny-t5: synth-intensity is a regression task",
                    planned)
    assert "drop it from the mixture" in error.message and "an encoder" in error.message
    stage = ("name: staged\nmethods: [{name: ia3, init_from: pre}]\nmodels: [tiny-t5]\nstages:\n  - {name: pre, "
             "method: ia3, tasks: [synth-polarity, synth-intensity], train: {max_steps: 1}}\ntasks: [synth-polarity]\n"
             "seeds: [1]\n")
    refused(write_suite(stage, "stage.yaml"), "stage 'pre' on tiny-t5: synth-intensity is a regression task", planned)
    assert any(c.task.name == "synth-mix" for c in planned(str(write_suite(MIXED, "encoder.yaml"))))


def test_the_draw_is_examples_proportional_with_the_cap_and_the_same_under_a_seed(write_suite):
    """Each member min(its rows, cap) rows, drawn with the seed, each feature marked with its member's index."""
    task = mixture(write_suite)
    bundle = build_bundle(task=task)
    train = TrainConfig(max_train_samples=20, max_length=32)
    data = mixture_data(task, bundle, train, 1, None)
    members = [i.split(":")[0] for i in data.example_ids]
    assert members.count("synth-polarity") == members.count("synth-intensity") == 12  # min(20, cap 12)
    assert [f["task"] for f in data.features] == [0] * 12 + [1] * 12
    assert mixture_data(task, bundle, train, 1, None).example_ids == data.example_ids
    assert mixture_data(task, bundle, train, 2, None).example_ids != data.example_ids


def test_template_variants_keep_their_task():
    """redraw_templates draws one of an example's template variants per step (text-to-text): each keeps its task."""
    from bench.tasks.mixture import mixture_spec

    registry = builtin_tasks()
    task = mixture_spec("t", "", [registry["synth-polarity"], registry["synth-choice"]], {"rule": "proportional",
                        "cap": 8}, scored=True)
    bundle = build_bundle("tiny-t5", task=task)
    data = mixture_data(task, bundle, TrainConfig(max_train_samples=8, max_length=32, redraw_templates=True), 1, None)
    variants = [(f["task"], v["task"]) for f in data.features for v in f.get("variants", [])]
    assert {t for t, _ in variants} == {1} and all(t == v for t, v in variants)  # synth-choice has two templates


def test_each_task_has_its_head_and_a_mixed_batch_loss_is_the_mean_of_each_rows_own_loss(write_suite):
    task = mixture(write_suite)
    bundle = build_bundle(task=task)
    multitask.install_heads(bundle, task, seed=3)
    heads = bundle.model.classifier
    assert isinstance(heads, task_heads.TaskHeads) and heads.widths == [2, 1]
    assert [h.out_proj.out_features for h in heads.heads] == [2, 1]
    objective = multitask.objective(bundle, task, None)
    torch.manual_seed(0)
    ids = torch.randint(5, 60, (4, 10))
    features = [{"input_ids": ids[i].tolist(), "labels": label, "task": t}
                for i, (label, t) in enumerate([(1, 0), (3.125, 1), (0, 0), (1.25, 1)])]
    loss = objective.loss(bundle.model.eval(), objective.collate(features))
    by_hand = []
    for f in features:  # each row alone, through its own task's head, with transformers' loss for that head
        task_heads.select(bundle.model, f["task"])
        out = bundle.model(input_ids=torch.tensor([f["input_ids"]])).logits
        by_hand.append(torch.nn.functional.cross_entropy(out, torch.tensor([f["labels"]])) if f["task"] == 0
                       else (out[0, 0] - f["labels"]) ** 2)
    torch.testing.assert_close(loss, torch.stack(by_hand).mean(), rtol=1e-5, atol=1e-6)


def test_task_average_is_the_mean_of_each_tasks_main_metric_and_null_when_one_is(write_suite):
    task = mixture(write_suite)
    metrics = {"synth-polarity:accuracy": 80.0, "synth-polarity:f1": 10.0, "synth-intensity:pearson": 50.0}
    assert multitask.task_average(metrics, task) == 65.0
    assert multitask.task_average({**metrics, "synth-intensity:pearson": None}, task) is None
    assert figure("scores.task_average") is TASK_AVERAGE and figure("scores.synth-polarity:accuracy") is TASK_SCORE


@pytest.mark.slow
def test_a_mixture_trains_once_and_is_scored_on_every_task(tmp_path, write_suite):
    suite, results = write_suite(MIXED), tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet", "--threads", "1"]) == 0
    records = {(r["cell"]["label"], r["cell"]["task"]): r
               for r in (json.loads(p.read_text()) for p in (results / "mixed").glob("*.json"))}
    assert {r["status"] for r in records.values()} == {"ok"}
    mixed, alone = records[("lora", "synth-mix")], records[("lora", "synth-polarity")]
    assert mixed["status"] == alone["status"] == "ok" and mixed["scores"]["main_metric"] == "task_average"
    scores = mixed["scores"]["metrics"]
    assert set(scores) == {"synth-polarity:accuracy", "synth-polarity:f1", "synth-intensity:pearson",
                           "synth-intensity:spearman", "task_average"}
    assert scores["task_average"] == pytest.approx(statistics.fmean(
        [scores["synth-polarity:accuracy"], scores["synth-intensity:pearson"]]))
    assert mixed["scores"]["tasks"]["synth-intensity"] == {"main_metric": "pearson", "n_examples": 16}
    # one LoRA for both tasks: the method's parameters are those of the single-task cell; the heads add up
    assert mixed["params"]["method"] == alone["params"]["method"]
    assert mixed["params"]["trainable"] - mixed["params"]["method"] == closed_forms.TINY_HEAD + \
        closed_forms.TINY_HEAD - 1 * (64 + 1)  # a 2-label head and a 1-output head
    assert mixed["train"]["steps"] == 2 and mixed["time"]["infer_latency_s"] is None
    # Poly's router: a row per task of the mixture (4 skills each), one on the single-task cell
    routed, single = records[("poly", "synth-mix")], records[("poly", "synth-polarity")]
    assert routed["params"]["method"] - single["params"]["method"] == 4 * 4 * (2 - 1)  # 4 projections × 4 skills
    assert main(["report", "--suite", str(suite), "--results", str(results), "--out", str(tmp_path / "r"),
                 "--format", "md"]) == 0


def _record(label, task, seed, metrics, stored, stored_bytes, tasks=None, refs=None, composed=(None, None)):
    cell = {"id": f"{label}-{task}-{seed}", "label": label, "model": "m", "task": task, "seed": seed,
            **({"stage_refs": refs} if refs else {})}
    scores = {"metrics": metrics, **({"tasks": tasks} if tasks else {})}
    return {"cell": cell, "status": "ok", "scores": scores,
            "params": {"stored": stored, "stored_bytes": stored_bytes, "method": None,
                       "composed": composed[0], "composed_bytes": composed[1]}}


def test_the_report_puts_the_mixture_beside_per_task_cells_with_their_storage():
    """Scores: the mean over seeds; storage: the per-task cells' sum (a fusion's task adapters once), or one cell."""
    tasks = {"a": {"main_metric": "accuracy", "n_examples": 10}, "b": {"main_metric": "pearson", "n_examples": 10}}
    records = [
        _record("lora", "a", 1, {"accuracy": 80.0}, 100, 400), _record("lora", "a", 2, {"accuracy": 90.0}, 100, 400),
        _record("lora", "b", 1, {"pearson": 40.0}, 90, 360), _record("lora", "b", 2, {"pearson": 60.0}, 90, 360),
        *(_record("lora", "mix", s, {"a:accuracy": v, "b:pearson": w, "task_average": (v + w) / 2}, 150, 600, tasks)
          for s, v, w in ((1, 70.0, 30.0), (2, 76.0, 34.0))),
        *(_record("adapter-fusion", task, 1, {metric: value}, stored, stored_bytes, refs=["s1", "s2"],
                  composed=(14, 200)) for task, metric, value, stored, stored_bytes in (
            ("a", "accuracy", 85.0, 30, 120), ("b", "pearson", 55.0, 20, 80))),
    ]
    rows = _rows(records)
    assert rows[("lora", "per task (2 cells)")] == [85.0, 50.0, 67.5, 190, 760, 2]
    assert rows[("lora", "one mixture")] == [73.0, 32.0, 52.5, 150, 600, 1]
    # the fusion cells keep 30 + 20 (fusion and head), and read the two stage adapters (14, 200 bytes) once
    fusion = ("adapter-fusion", "per task (2 cells, over 2 task adapters)")
    assert rows[fusion] == [85.0, 55.0, 70.0, 30 + 20 + 14, 120 + 80 + 200, 4]
    # a record from before params.composed: its storage unknown, never the fusion's own state alone
    records[-1]["params"].update(composed=None, composed_bytes=None)
    assert _rows(records)[fusion][3:5] == [None, None]
    # fusion cells that read different adapters may share some: unknown
    records[-1]["params"].update(composed=14, composed_bytes=200)
    records[-1]["cell"]["stage_refs"] = ["s1", "s3"]
    assert _rows(records)[("adapter-fusion", "per task (2 cells, over 3 task adapters)")][3:5] == [None, None]


def _rows(records: list[dict]) -> dict:
    import pandas as pd

    from bench.report.multitask import multitask_tables

    (table,) = multitask_tables(pd.DataFrame({"record": records}))
    return {(row[0].text, row[1].text): [c.value for c in row[2:]] for row in table.rows}


def test_poly_routes_each_row_by_its_task(write_suite):
    """A mixed batch through Poly gives each row what the row gives alone under its own task's router row (and the
    two tasks' rows differ): the rows' tasks reach the router."""
    from bench import methods
    from bench.methods.base import ApplyContext

    task = mixture(write_suite)
    bundle = build_bundle(task=task)
    multitask.install_heads(bundle, task, seed=0)
    method = methods.get("poly")
    adapted = method.apply(bundle.model, method.resolve({}, "roberta", str),
                           ApplyContext(bundle, TrainConfig(), 1, task=task))
    routers = [p for n, p in adapted.model.named_parameters() if n.endswith("module_logits")]
    assert routers and all(p.shape == (2, 4) for p in routers)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.model.named_parameters():
            if "poly_lora_B" in name or name.endswith("module_logits"):
                p.normal_(0, 1.0)
    model = adapted.model.eval()
    ids = torch.randint(5, 60, (2, 10))
    task_heads.select(model, torch.tensor([0, 1]))
    together = model(input_ids=ids).logits
    alone = []
    for row, t in enumerate((0, 1)):
        task_heads.select(model, t)
        alone.append(model(input_ids=ids[row:row + 1]).logits[0, : [2, 1][t]])
    torch.testing.assert_close(together[0, :2], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[1, :1], alone[1], rtol=1e-5, atol=1e-6)
    task_heads.select(model, 0)
    with_task_0 = model(input_ids=ids[1:2]).logits
    task_heads.select(model, 1)
    assert not torch.allclose(model(input_ids=ids[1:2]).logits[0, :1], with_task_0[0, :1])  # heads differ too
    # the router itself: the same head (task 1's) with task 0's routing gives another output
    for module in model.modules():
        if hasattr(module, "task_rows") and not isinstance(module, task_heads.TaskHeads):
            module.task_rows = 0
    assert not torch.allclose(model(input_ids=ids[1:2]).logits[0, :1], alone[1])


TEXT_TO_TEXT = """\
name: t2t
methods: [lora, poly]
models: [tiny-t5]
mixtures:
  - {name: synth-t2t, tasks: [synth-polarity, synth-choice], mixing: {rule: proportional, cap: 8}}
tasks: [synth-t2t]
seeds: [1]
train: {batch_size: 4, max_steps: 2, max_length: 32, eval_batch_size: 32, max_eval_samples: 8, max_train_samples: 8}
"""


@pytest.mark.slow
def test_a_text_to_text_mixture_scores_every_task_by_its_own_templates(tmp_path, write_suite):
    suite, results = write_suite(TEXT_TO_TEXT), tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet", "--threads", "1"]) == 0
    records = [json.loads(p.read_text()) for p in (results / "t2t").glob("*.json")]
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    for r in records:
        scores = r["scores"]["metrics"]
        assert set(scores) == {"synth-polarity:accuracy", "synth-polarity:f1", "synth-choice:accuracy",
                               "task_average"}
        assert scores["task_average"] == pytest.approx((scores["synth-polarity:accuracy"]
                                                        + scores["synth-choice:accuracy"]) / 2)
