"""Sweeps and the selection split: settings expand into cells, the setting is chosen on the selection split only,
keep_best never chooses on the reported split, two stages resume, and the report ranks only the chosen setting."""

import csv
import json
import random

import pytest

from bench.cli import main
from bench.config import TrainConfig
from bench.plan import grid
from bench.plan.selection import choose
from bench.plan.suite import load_suite
from bench.tasks.prepare import hold_out
from bench.tasks.registry import registry
from tests.conftest import TINY_SUITE
from tests.refusals import planned, refused

SWEEP = TINY_SUITE.replace("  - {name: full, train: {lr: 1.0e-3}}\n", "").replace(
    "  - {name: lora, train: {lr: 5.0e-3}}",
    "  - {name: lora, sweep: {lr: [1.0e-4, 3.0e-3], r: [4, 8]}}\n  - {name: bitfit}") + "selection: {heldout: 0.1}\n"


def test_a_sweep_expands_into_its_product_with_the_setting_in_the_id(write_suite):
    cells = grid.expand(load_suite(str(write_suite(SWEEP))))
    lora = [c for c in cells if c.label == "lora"]
    assert sorted((c.sweep["lr"], c.sweep["r"]) for c in lora) == [(1e-4, 4), (1e-4, 8), (3e-3, 4), (3e-3, 8)]
    assert len({c.id for c in cells}) == 5  # four LoRA settings and BitFit, each its own id
    for c in lora:  # the swept values are what the cell resolves to: training settings and the method's own
        assert c.train.lr == c.sweep["lr"] and c.method_config["r"] == c.sweep["r"]
        assert c.train.selection_heldout == 0.1
    assert [c.sweep for c in cells if c.label == "bitfit"] == [{}]
    assert "method=lora [lr=0.0001, r=4]" in lora[0].line()


def test_random_search_draws_the_same_settings_every_time(write_suite):
    text = SWEEP.replace("{lr: [1.0e-4, 3.0e-3], r: [4, 8]}", "{lr: {log_uniform: [1.0e-5, 1.0e-2]}, r: [4, 8], "
                                                              "trials: 6, seed: 3}")
    first = [c.sweep for c in grid.expand(load_suite(str(write_suite(text)))) if c.label == "lora"]
    again = [c.sweep for c in grid.expand(load_suite(str(write_suite(text, "again.yaml")))) if c.label == "lora"]
    assert first == again and 1 < len(first) <= 6
    assert all(1e-5 <= s["lr"] <= 1e-2 and s["r"] in (4, 8) for s in first)
    other = text.replace("seed: 3", "seed: 4")
    assert [c.sweep for c in grid.expand(load_suite(str(write_suite(other, "o.yaml")))) if c.label == "lora"] != first


@pytest.mark.parametrize("change,message", [
    (lambda t: t.replace("selection: {heldout: 0.1}\n", ""), "a sweep needs the suite's `selection:`"),
    (lambda t: t.replace("r: [4, 8]", "rank: [4, 8]"), "'rank' cannot be swept"),
    (lambda t: t.replace("lr: [1.0e-4, 3.0e-3]", "lr: {log_uniform: [1.0e-4, 3.0e-3]}"), "give `trials: N`"),
    (lambda t: t.replace("lr: [1.0e-4, 3.0e-3]", "lr: {log_uniform: [0, 3.0e-3]}"), "0 < lo < hi"),
    (lambda t: t.replace("lr: [1.0e-4, 3.0e-3]", "lr: []"), "lists no value"),
    (lambda t: t.replace("lr: [1.0e-4, 3.0e-3]", "lr: [-1.0, 3.0e-3]"), "'lr' must be positive"),
    (lambda t: t.replace("{name: lora, sweep:", "{name: lora, train: {lr: 1.0e-3}, sweep:"), "both swept and set"),
    (lambda t: t.replace("heldout: 0.1", "heldout: 0.9"), "'heldout' must be a fraction in (0, 0.5]"),
    (lambda t: t.replace("heldout: 0.1", "heldout: 0.1, split: validation"), "exactly one of"),
    (lambda t: t.replace("heldout: 0.1", "heldout: 0.1, sweep_seeds: 1"), "leaves none of the suite's 1 seeds"),
])
def test_bad_sweeps_and_protocols_are_one_clear_error_with_the_line(write_suite, change, message):
    refused(write_suite(change(SWEEP)), message, planned)


def test_keep_best_on_the_reported_split_is_refused(write_suite):
    text = TINY_SUITE.replace("max_steps: 20,", "max_steps: 20, eval_every: 10, keep_best: true,")
    refused(write_suite(text), "selection on the test data", planned)
    grid.expand(load_suite(str(write_suite(text + "selection: {heldout: 0.1}\n", "ok.yaml"))))  # with a protocol


def test_the_selection_split_cannot_be_the_reported_or_the_training_split(write_suite, tmp_path):
    task_file = _disagreeing_task(tmp_path)
    base = TINY_SUITE.replace("tasks: [synth-polarity]", f"tasks: [flipped]\ntask_files: [{task_file}]")
    for split, role in (("eval", "reported"), ("train", "training")):
        refused(write_suite(base + f"selection: {{split: {split}}}\n"), f"is task 'flipped''s {role} split")
    load_suite(str(write_suite(base + "selection: {split: selection}\n")))


def test_held_out_rows_are_stratified_disjoint_and_fixed_by_the_seed():
    task = registry()["synth-polarity"]
    rows = [{"idx": i, "sentence": "s", "label": int(i % 10 < 3)} for i in range(200)]  # 30 % positive
    kept, heldout = hold_out(task, rows, 0.1, seed=1)
    assert len(heldout) == 20 and sum(r["label"] for r in heldout) == 6  # each class in its share
    assert {r["idx"] for r in kept}.isdisjoint(r["idx"] for r in heldout) and len(kept) + len(heldout) == 200
    assert hold_out(task, rows, 0.1, seed=1)[1] == heldout and hold_out(task, rows, 0.1, seed=2)[1] != heldout


def _disagreeing_task(folder) -> str:
    """A task whose selection split holds the evaluation split's sentences with every label flipped: whichever
    setting is best on one is worst on the other."""
    draw = random.Random(0)
    words = ["good", "great", "fine", "bad", "awful", "dull"]
    rows = [{"sentence": " ".join(draw.choice(words) for _ in range(6)), "label": draw.randrange(2)}
            for _ in range(96)]
    for name, part in (("train", rows[:64]), ("eval", rows[64:]), ("selection", rows[64:])):
        flip = name == "selection"
        (folder / f"{name}.jsonl").write_text("".join(
            json.dumps({**r, "label": 1 - r["label"] if flip else r["label"]}) + "\n" for r in part))
    (folder / "tasks.yaml").write_text(
        "tasks:\n  - name: flipped\n    type: classification\n"
        "    source: {files: {train: train.jsonl, eval: eval.jsonl, selection: selection.jsonl}}\n"
        "    text: [sentence]\n    label: label\n    labels: ['0', '1']\n    metrics: [accuracy]\n")
    return str(folder / "tasks.yaml")


@pytest.mark.slow
def test_the_report_follows_the_selection_split_not_the_reported_one(tmp_path, write_suite):
    task_file = _disagreeing_task(tmp_path)
    text = (TINY_SUITE.replace("tasks: [synth-polarity]", f"tasks: [flipped]\ntask_files: [{task_file}]")
            .replace("  - {name: full, train: {lr: 1.0e-3}}\n", "")
            .replace("  - {name: lora, train: {lr: 5.0e-3}}", "  - {name: head-only, sweep: {lr: [1.0e-6, 0.3]}}")
            + "selection: {split: selection}\n")
    suite, results, out = write_suite(text), tmp_path / "results", tmp_path / "reports"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    records = [json.loads(p.read_text()) for p in (results / "tiny").glob("*.json")]
    by_lr = {r["cell"]["sweep"]["lr"]: r["scores"] for r in records}
    selection = {lr: s["selection"]["accuracy"] for lr, s in by_lr.items()}
    reported = {lr: s["metrics"]["accuracy"] for lr, s in by_lr.items()}
    assert selection[1e-6] != selection[0.3], "the two settings must predict differently for the test to mean anything"
    for lr in by_lr:  # the flipped labels: what is right on one split is wrong on the other
        assert selection[lr] == pytest.approx(100 - reported[lr])
    chosen = max(selection, key=selection.get)
    assert choose(records)[("head-only", "tiny-encoder", "flipped")].chosen == {"lr": chosen}
    assert main(["report", "--suite", str(suite), "--results", str(results), "--out", str(out),
                 "--format", "md,csv"]) == 0
    md = (out / "tiny" / "report.md").read_text()
    assert "## Selected settings" in md and f"| flipped | head-only | lr={chosen:g} |" in md
    with open(out / "tiny" / "csv" / "survey-tiny-encoder.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["Method"] == "head-only"]
    # the ranked score is the chosen setting's (one row, one seed), the worse of the two on the reported split
    assert len(rows) == 1 and rows[0]["flipped (accuracy) n"] == "1"
    assert float(rows[0]["flipped (accuracy)"]) == pytest.approx(reported[chosen])
    assert reported[chosen] == min(reported.values())


def test_the_dry_run_counts_one_second_stage_cell_in_words(write_suite, tmp_path, capsys):
    """Two seeds, one chosen on: one cell in the second stage; before the fix the dry-run said '1 cells'."""
    text = SWEEP.replace(", r: [4, 8]", "").replace("heldout: 0.1", "heldout: 0.1, sweep_seeds: 1").replace(
        "seeds: [1]", "seeds: [1, 2]")
    assert main(["run", "--suite", str(write_suite(text)), "--results", str(tmp_path / "results"), "--quiet",
                 "--dry-run"]) == 0
    assert "second stage: 1 cell (the chosen setting on the other seeds)" in capsys.readouterr().err


@pytest.mark.slow
def test_two_stages_choose_on_the_first_seed_then_run_the_choice_on_the_rest_and_resume(tmp_path, write_suite, capsys):
    text = SWEEP.replace("seeds: [1]", "seeds: [1, 2, 3]").replace(", r: [4, 8]", "").replace(
        "heldout: 0.1", "heldout: 0.1, sweep_seeds: 1").replace("max_steps: 20", "max_steps: 4")
    suite, results = write_suite(text), tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet", "--dry-run"]) == 0
    assert "second stage: 2 cells" in capsys.readouterr().err
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet", "--save-adapters"]) == 0
    records = [json.loads(p.read_text()) for p in (results / "tiny").glob("*.json")]
    # --save-adapters reaches both stages: every trained cell's adapter is there for `eval --adapter`
    assert {p.name for p in (results / "tiny" / "adapters").iterdir()} == {r["cell"]["id"] for r in records}
    lora = [r for r in records if r["cell"]["label"] == "lora"]
    first = [r for r in lora if r["cell"]["sweep_stage"] == 1]
    second = [r for r in lora if r["cell"]["sweep_stage"] == 2]
    assert sorted(r["cell"]["seed"] for r in first) == [1, 1] and sorted(r["cell"]["seed"] for r in second) == [2, 3]
    chosen = choose(records)[("lora", "tiny-encoder", "synth-polarity")].chosen
    assert all(r["cell"]["sweep"] == chosen for r in second)
    assert sorted(r["cell"]["seed"] for r in records if r["cell"]["label"] == "bitfit") == [1, 2, 3]
    written = {p.name: p.stat().st_mtime_ns for p in (results / "tiny").glob("*.json")}
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0  # resumes: nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in (results / "tiny").glob("*.json")} == written


def test_held_out_rows_come_from_the_training_split_and_leave_it():
    from bench.tasks.data import load_rows
    from bench.tasks.prepare import training_rows

    task = registry()["synth-polarity"]
    rows, heldout = training_rows(task, TrainConfig(selection_heldout=0.2), 1, None)
    everything = load_rows(task, "train")
    assert len(heldout) == 800 and len(rows) == 3200
    assert all(everything[r["idx"]]["sentence"] == r["sentence"] for r in heldout)
    assert not {r["idx"] for r in heldout} & {r["idx"] for r in rows}
