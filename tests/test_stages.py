"""Pre-training stages: a method trained on a task mixture, saved once, and the start of the cells that name it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.tasks.prepare import mixture_counts
from tests.refusals import refused

STAGED = """\
name: staged
methods:
  - {name: ia3, init_from: mix, label: ia3+pre-training}
  - ia3
models: [tiny-t5]
tasks: [synth-polarity]
seeds: [1, 2]
stages:
  - {name: mix, method: ia3, tasks: [synth-polarity, synth-choice], mixing: {rule: proportional, cap: 40},
     train: {max_steps: 3, lr: 0.3, batch_size: 4, max_length: 32}}
train: {batch_size: 4, max_steps: 2, max_length: 32, eval_batch_size: 32, max_eval_samples: 16}
"""


def test_a_stage_is_one_cell_per_model_and_its_id_is_in_every_cell_that_starts_from_it(write_suite):
    cells = grid.expand(load_suite(str(write_suite(STAGED))))
    stages = [c for c in cells if c.stage]
    assert len(stages) == 1 and stages[0].label == "stage:mix" and stages[0].train.objective == "lm"
    assert [m.name for m in stages[0].task.members] == ["synth-polarity", "synth-choice"]
    started = [c for c in cells if c.label == "ia3+pre-training"]
    assert len(started) == 2 and all(c.init_from == stages[0].id and c.config["init_from"] == stages[0].id
                                     for c in started)
    plain = [c for c in cells if c.label == "ia3"]
    assert all("init_from" not in c.config for c in plain)  # cells without a stage keep their ids
    # a stage's settings are in its id, so in theirs too
    other = grid.expand(load_suite(str(write_suite(STAGED.replace("lr: 0.3", "lr: 0.1"), "other.yaml"))))
    assert {c.id for c in other if c.label == "ia3+pre-training"}.isdisjoint(c.id for c in started)
    assert {c.id for c in other if c.label == "ia3"} == {c.id for c in plain}


@pytest.mark.parametrize("change,message", [
    (lambda t: t.replace("init_from: mix", "init_from: mox"), "unknown stage 'mox'"),
    (lambda t: t.replace("{name: ia3, init_from: mix,", "{name: lora, init_from: mix,"), "the state loads only"),
    (lambda t: t.replace("train: {max_steps: 3, lr: 0.3,", "train: {epochs: 1,"), "trains for `max_steps`"),
    (lambda t: t.replace("synth-choice]", "synth-chioce]"), "unknown task 'synth-chioce'"),
    (lambda t: t.replace("rule: proportional", "rule: temperature"), "needs 'temperature' > 0"),
])
def test_bad_stages_are_one_error_with_the_line(write_suite, change, message):
    refused(write_suite(change(STAGED)), message)


def test_mixing_rules_against_their_closed_forms():
    sizes = {"big": 10_000, "small": 100}
    assert mixture_counts(sizes, {"rule": "proportional", "cap": 1000}) == {"big": 1000, "small": 100}
    # temperature 2: shares ∝ sqrt(capped size), the total kept: 1100 × sqrt(1000) / (sqrt(1000) + sqrt(100))
    flat = mixture_counts(sizes, {"rule": "temperature", "temperature": 2.0, "cap": 1000})
    norm = 1000 ** 0.5 + 10
    assert flat == {"big": round(1100 * 1000 ** 0.5 / norm), "small": round(1100 * 10 / norm)}
    assert flat["small"] > 100  # a small task is drawn more often than it has rows: its rows repeat


@pytest.mark.slow
def test_the_stage_trains_once_and_every_cell_starts_from_its_saved_state(tmp_path, write_suite, capsys):
    suite, results = write_suite(STAGED), tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--dry-run", "--tflops", "1"]) == 0
    plan = capsys.readouterr().out
    assert plan.count("method=stage:mix") == 1 and "a pre-training stage: scored on nothing" not in plan.split(
        "method=stage:mix")[0]
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (results / "staged").glob("*.json")}
    stage = next(r for r in records.values() if r["cell"].get("stage") == "mix")
    assert stage["status"] == "ok" and stage["train"]["steps"] == 3 and stage["scores"]["metrics"] == {}
    assert len(stage["train"]["example_ids"]) == 40 + 40  # each task capped at 40 rows
    saved = load_file(str(results / "staged" / "stages" / stage["cell"]["id"] / "state.safetensors"))
    assert saved and all(not torch.all(t == 1) for t in saved.values())  # (IA)³ vectors moved off their ones
    started = [r for r in records.values() if r["cell"].get("init_from") == stage["cell"]["id"]]
    assert len(started) == 2 and all(r["status"] == "ok" for r in started)
    # the first step of a started cell is from the stage's state: its first loss differs from a plain cell's
    plain = {r["cell"]["seed"]: r for r in records.values() if r["cell"]["label"] == "ia3"}
    for r in started:
        assert r["train"]["first_loss"] != pytest.approx(plain[r["cell"]["seed"]]["train"]["first_loss"])
    mtimes = {p: p.stat().st_mtime_ns for p in (results / "staged").glob("*.json")}
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0  # nothing reruns
    assert {p: p.stat().st_mtime_ns for p in (results / "staged").glob("*.json")} == mtimes
    out = tmp_path / "reports"
    assert main(["report", "--suite", str(suite), "--results", str(results), "--out", str(out), "--format", "md"]) == 0
    md = (out / "staged" / "report.md").read_text()
    assert "Pre-training stages" in md and "| mix | tiny-t5 | ia3 | synth-polarity, synth-choice | 3 |" in md


def test_a_cell_whose_stage_has_not_run_fails_saying_so(write_suite, tmp_path):
    from bench.cell.recipe import run_cell

    cell = next(c for c in grid.expand(load_suite(str(write_suite(STAGED)))) if c.init_from)
    import dataclasses

    record = run_cell(dataclasses.replace(cell, init_dir=str(tmp_path / "nowhere")), quiet=True)
    assert record["status"] == "failed" and "has no saved state" in record["error"]["message"]
