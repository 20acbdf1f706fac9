"""A task that starts from another task's trained state (a task entry's `init_from`: bench/plan/stages.py), as the
LoRA paper starts MRPC, RTE and STS-B from its MNLI-adapted LoRA weights."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.errors import BadInput
from bench.plan import grid
from bench.plan.suite import load_suite

STARTED = """name: started
methods: [lora]
models: [tiny-encoder]
tasks:
  - synth-polarity
  - {name: synth-intensity, init_from: synth-polarity}
seeds: [1, 2]
train: {max_steps: 3, batch_size: 8, max_length: 16, lr: 1.0e-2}
"""


def error_of(write_suite, text: str) -> BadInput:
    with pytest.raises(BadInput) as caught:
        grid.expand(load_suite(str(write_suite(text))))
    return caught.value


def test_each_cell_starts_from_its_start_tasks_cell_of_the_same_seed(write_suite):
    """The regression task's cells hold the id of the polarity cell of their seed (in their config, so in their
    id); the polarity cells keep their state for them and start from nothing."""
    cells = grid.expand(load_suite(str(write_suite(STARTED))))
    start = {c.seed: c for c in cells if c.task.name == "synth-polarity"}
    started = [c for c in cells if c.task.name == "synth-intensity"]
    assert len(start) == len(started) == 2
    for cell in started:
        assert cell.init_from == start[cell.seed].id and cell.config["init_from"] == cell.init_from
        assert not cell.keeps_state
    assert all(c.keeps_state and c.init_from is None for c in start.values())
    plain = grid.expand(load_suite(str(write_suite(STARTED.replace(", init_from: synth-polarity", "")))))
    assert {c.id for c in plain if c.task.name == "synth-intensity"}.isdisjoint(c.id for c in started)


@pytest.mark.parametrize("entry, says", [
    ("{name: synth-intensity, init_from: synth-digits}", "unknown task 'synth-digits'"),
    ("{name: synth-intensity, init_from: synth-intensity}", "cannot start from its own trained state"),
])
def test_a_start_task_must_be_another_task_of_the_suite(write_suite, entry, says):
    err = error_of(write_suite, STARTED.replace("{name: synth-intensity, init_from: synth-polarity}", entry))
    assert says in err.message and err.where.endswith(":6")


def test_starts_do_not_chain_or_mix_with_a_stage(write_suite):
    chained = STARTED.replace("  - synth-polarity\n", "  - synth-polarity\n  - {name: synth-choice, init_from: "
                              "synth-intensity}\n")
    err = error_of(write_suite, chained)
    assert "which starts from 'synth-polarity'" in err.message and err.where.endswith(":6")
    staged = STARTED.replace("methods: [lora]", "methods: [{name: lora, init_from: mix}]") + (
        "stages:\n  - {name: mix, method: lora, tasks: [synth-polarity], train: {max_steps: 2}}\n")
    assert "a cell starts from one state" in error_of(write_suite, staged).message


def test_a_plan_without_the_start_cell_is_refused_before_any_work(write_suite, tmp_path, capsys):
    path = write_suite(STARTED)
    assert main(["run", "--suite", str(path), "--tasks", "synth-intensity", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "suite.yaml:6" in err and "no 'synth-polarity' cell of method 'lora', model 'tiny-encoder', seed 1" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_start_cell_runs_first_and_its_state_but_the_head_starts_the_others(write_suite, tmp_path):
    """A 2-class classifier's LoRA state starts a regression task (a head of another shape): the started cell is
    ok, and its LoRA tensors before training are the saved ones, its head not (loading the head would fail)."""
    from bench.cell.recipe import setup

    suite, results = write_suite(STARTED.replace("seeds: [1, 2]", "seeds: [1]")), tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    records = {r["cell"]["id"]: r for r in (json.loads(p.read_text()) for p in (results / "started").glob("*.json"))}
    assert sorted(r["status"] for r in records.values()) == ["ok", "ok"]
    started = next(r for r in records.values() if r["cell"].get("init_from"))
    saved = load_file(str(results / "started" / "stages" / started["cell"]["init_from"] / "state.safetensors"))
    cell = next(c for c in grid.expand(load_suite(str(suite))) if c.init_from)
    cell = dataclasses.replace(cell, init_dir=str(results / "started" / "stages" / cell.init_from))
    state = setup(cell, torch.device("cpu")).adapted.state_to_store()
    lora = [name for name in saved if "lora_" in name]
    assert lora and all(torch.equal(state[name], saved[name]) for name in lora)
    heads = [name for name in saved if "classifier" in name.split(".")]
    assert heads and all(state[name].shape != saved[name].shape or not torch.equal(state[name], saved[name])
                         for name in heads)
    assert state["base_model.model.classifier.out_proj.weight"].shape[0] == 1  # the regression head, 1 output
