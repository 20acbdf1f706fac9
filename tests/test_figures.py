"""The figure registry: the docs, the record and both diff commands read the same declarations."""

import re
from pathlib import Path

import pytest

from bench import figures, judging
from bench.figures import FIGURES
from bench.judging import Tolerances, judge

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_docs_tables_are_the_registry():
    text = (DOCS / "measurement.md").read_text()
    for section in figures.SECTIONS:
        assert figures.markdown_table(section) in text, f"docs/measurement.md: {section} table out of date (make docs)"
    assert judging.rules_table() in text
    documented = set(re.findall(r"^\| `(\w+)` \|", text, flags=re.M))
    assert documented == {f.name for f in FIGURES.values()}


def test_a_new_record_holds_exactly_the_registered_figures():
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.record import new_record

    record = new_record(grid.expand(load_suite("smoke"))[0])
    for section in figures.SECTIONS:
        assert list(record[section]) == list(figures.names(section))
        assert all(v is None for v in record[section].values())  # null until measured


def test_every_entry_is_well_formed():
    for f in FIGURES.values():
        assert f.section in figures.SECTIONS and f.rule in judging.RULES
        assert f.seeds in ("first", "mean") and f.tasks in (None, "largest", "mean", "same")
        assert f.definition.endswith(".") and f.unit
        assert f.unit != "bytes" or f.name.endswith("_bytes")


@pytest.mark.parametrize("key, a, b, same_torch, verdict", [
    ("params.trainable", 100, 100, True, "same"),
    ("params.trainable", 100, 101, True, "flag"),
    ("params.trainable", 100, None, True, "flag"),  # vanished
    ("memory.peak_source", "cpu_peak_rss_bytes", "device_peak_allocated_bytes", True, "flag"),
    ("memory.activation_bytes", 1000, 1001, True, "flag"),  # one torch version: exact
    ("memory.activation_bytes", 1000, 1050, False, "ok"),  # across versions: within 5 %
    ("memory.activation_bytes", 1000, 1051, False, "flag"),
    ("scores.accuracy", 80.0, 80.9, True, "ok"),  # 1 point
    ("scores.accuracy", 80.0, 81.1, True, "flag"),
    ("scores.f1", 80.0, 81.5, True, "ok"),  # per metric: 2 points
    ("memory.peak_bytes", 1000, 1100, True, "ok"),  # 10 %
    ("memory.peak_bytes", 1000, 1101, True, "warn"),
    ("memory.cpu_peak_rss_bytes", None, 5, True, "warn"),  # measured figures never flag
    ("time.train_s", 10.0, 14.9, True, "ok"),
    ("time.train_s", 10.0, 15.0, True, "warn"),
    ("time.train_s", 10.0, 6.6, True, "warn"),  # faster by ×1.5 too
    ("time.mfu", 0.0, 0.1, True, "warn"),
    ("forgetting.delta", 0.10, 0.15, True, "ok"),  # 0.05 nats
    ("forgetting.lm_loss_after", 3.0, 3.06, True, "flag"),
    ("train.unregistered", 1, 2, True, "flag"),  # unknown figures are compared exactly
])
def test_judge_applies_each_rule(key, a, b, same_torch, verdict):
    tol = Tolerances(score_abs=1.0, score_abs_per_metric={"f1": 2.0})
    assert judge(key, a, b, tol, same_torch)[0] == verdict


def test_the_summary_rules_come_from_the_registry():
    """method_summary keeps exactly the figures with a cross-task rule, computed as the rule says."""
    import pandas as pd

    from bench.report.aggregate import OVER_TASKS, _over_tasks

    group = pd.DataFrame({"params.total": [10, 30], "time.train_s": [1.0, 4.0], "memory.peak_source": ["a", "a"]})
    assert _over_tasks(group, "params.total", OVER_TASKS["params.total"]) == 30
    assert _over_tasks(group, "time.train_s", OVER_TASKS["time.train_s"]) == 2.5
    assert _over_tasks(group, "memory.peak_source", OVER_TASKS["memory.peak_source"]) == "a"
    group.loc[1, "memory.peak_source"] = "b"
    assert _over_tasks(group, "memory.peak_source", "same") is None
    assert set(OVER_TASKS) == {f.key for f in FIGURES.values() if f.tasks}


def test_show_writes_each_unit():
    assert FIGURES["params.trainable"].show(124_645_632) == "124.6M"
    assert FIGURES["params.stored_bytes"].show(7112) == "6.9 KB"
    assert FIGURES["flops.train_total"].show(3.1e12) == "3.1e12"
    assert FIGURES["time.train_s"].show(None) == "–"
    assert FIGURES["time.mfu"].show(0.41234) == "0.4123"


def test_figures_command_lists_the_registry(capsys):
    from bench.cli import main

    assert main(["figures"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(FIGURES) and lines[0].startswith("params.total")


def test_the_instruments_write_every_figure_a_cpu_cell_can_have():
    """A real tiny cell in this process: each registry figure is measured by some instrument, except
    those that only a GPU (or a GPU the datasheet table knows) gives."""
    import torch

    from bench.cell.recipe import run_cell
    from bench.plan import grid
    from bench.plan.suite import load_suite

    cell = next(c for c in grid.expand(load_suite("ci")) if c.method == "lora" and c.model.name == "tiny-encoder")
    record = run_cell(cell, quiet=True)
    assert record["status"] == "ok", record["error"]
    nvml = {"memory.nvml_peak_bytes", "memory.train_nvml_mean_bytes", "memory.train_nvml_p99_bytes"}
    cuda_only = {"memory.device_peak_allocated_bytes", "memory.device_peak_reserved_bytes",
                 "memory.eval_peak_allocated_bytes", "memory.device_other_bytes", "time.mfu", *nvml,
                 *(f"memory.train_{c}_{s}_bytes" for c in ("reserved", "allocated") for s in ("mean", "p99", "max"))}
    if torch.cuda.is_available():
        cuda_only = {"time.mfu", *nvml}  # NVML is an extra; MFU needs a known GPU
    # only with train.compile (tests/test_train.py); only with train.forgetting (tests/test_forgetting.py); only
    # for a method that reads other cells' saved states (AdapterFusion: tests/test_fusion.py)
    optional = {"time.compile_s", *(f.key for f in FIGURES.values() if f.section == "forgetting"),
                "params.composed", "params.composed_bytes"}
    missing = {key for key, f in FIGURES.items() if f.recorded and record[f.section][f.name] is None} - cuda_only \
        - optional
    assert not missing, f"no instrument wrote {sorted(missing)}"


def test_make_docs_rewrites_a_stale_table_and_keeps_the_prose(tmp_path):
    from bench.tools.docs import main

    for name in ("measurement.md", "regression.md"):
        (tmp_path / name).write_text((DOCS / name).read_text())
    stale = (tmp_path / "measurement.md").read_text().replace("| `load_s` | s | timing |", "| `load_s` | s | exact |")
    (tmp_path / "measurement.md").write_text(stale)
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "measurement.md").read_text() == (DOCS / "measurement.md").read_text()
    assert (tmp_path / "regression.md").read_text() == (DOCS / "regression.md").read_text()


# ---- figures that wire themselves ----

def _cell():
    from bench.plan import grid
    from bench.plan.suite import load_suite

    return grid.expand(load_suite("ci"))[0]


def test_a_record_takes_only_declared_figures():
    """A misspelt figure fails where it is written, whichever way it is written, naming the section's figures; the
    record still serialises as plain JSON and pickles (a Ray task or Slurm job returns it) as a plain dict."""
    import json
    import pickle

    from bench.record import new_record

    record = new_record(_cell())
    record["time"]["train_s"] = 1.5
    record["memory"].update(weights_bytes=4, grad_bytes=8)
    for write in (lambda: record["time"].__setitem__("train_secs", 1.0),
                  lambda: record["memory"].update({"weight_bytes": 4}),
                  lambda: record["flops"].setdefault("train", 1)):
        with pytest.raises(KeyError, match=r"not a figure of the registry .*figures: "):
            write()
    assert json.loads(json.dumps(record))["time"]["train_s"] == 1.5
    assert "train_secs" not in record["time"] and "weight_bytes" not in record["memory"]
    back = pickle.loads(pickle.dumps(record))
    assert type(back["time"]) is dict and back["time"] == record["time"]


def test_an_instrument_with_a_moment_the_recipe_lacks_fails_as_it_is_defined():
    from bench.cell.instruments import MOMENTS, Instrument, Instruments

    with pytest.raises(TypeError, match=r"Late.trainedd is not a moment of the recipe; moments: loading"):
        class Late(Instrument):
            def trainedd(self, run, record):
                pass

    class Fine(Instrument):  # private helpers are allowed beside the moments
        def trained(self, run, record):
            record["seen"] = self._note()

        def _note(self):
            return "trained"

    tools, record = Instruments(Fine()), {}
    tools.at("trained", None, record)
    assert record == {"seen": "trained"} and set(MOMENTS) >= {"loading", "trained", "evaluated"}
    with pytest.raises(ValueError, match="'trainedd' is not a call moment"):
        tools.at("trainedd", None, record)
    with pytest.raises(ValueError, match="'trained' is not a window moment"):
        with tools.window("trained", None, record):
            pass


def test_tables_and_the_explore_page_are_built_from_where_a_figure_is_shown(tmp_path, monkeypatch):
    """Declaring a figure shown in a place is all it takes: time.eval_s, declared here for the inference table
    and the explore page, gets a column in both, its value written as declared (× 1000, one decimal)."""
    import dataclasses

    from bench.report import write_report
    from tests.handmade import survey_records, write_store

    eval_s = dataclasses.replace(FIGURES["time.eval_s"], shown=(
        figures.Shown("inference", "Eval time (ms)", "Eval time (s)", times=1e3, decimals=1, better="lower"),
        figures.Shown("explore", "Eval (ms)", times=1e3, decimals=1, axis="eval time (ms)", better="lower")))
    monkeypatch.setattr(figures, "_FIGURES", [eval_s if f.key == "time.eval_s" else f for f in figures._FIGURES])
    records = survey_records()
    for r in records:
        if r["status"] == "ok":
            r["time"]["eval_s"] = 0.25
    write_store(tmp_path / "results", records)
    write_report("hand", tmp_path / "results", tmp_path / "reports", ["md", "html"])
    report = tmp_path / "reports" / "hand"
    text = (report / "report.md").read_text()
    assert "Eval time (ms)" in text and "| **250.0** |" in text  # every method alike: each marked best
    page = (report / "index.html").read_text()
    assert ">Eval (ms)</th>" in page and '"label":"eval time (ms)"' in page
    with pytest.raises(KeyError, match="unknown place 'sidebar'"):
        figures.shown_in("sidebar")


def test_time_to_training_is_setup_and_what_precedes_the_first_step(tmp_path):
    """time.to_training_s against a clock outside the cell: at least load_s (setup is part of it), and with the
    training and evaluation that follow it, no more than the whole cell took; null for a method that trains
    nothing (zero-shot)."""
    import time

    from bench.cell.recipe import run_cell
    from bench.plan import grid
    from bench.plan.suite import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmethods: [lora, zero-shot]\nmodels: [tiny-t5]\ntasks: [synth-polarity]\nseeds: [1]\n"
                     "train: {max_steps: 4, batch_size: 8, max_length: 32, max_eval_samples: 16}\n")
    lora, zero = grid.expand(load_suite(str(suite)))
    started = time.perf_counter()
    record = run_cell(lora, quiet=True)
    whole = time.perf_counter() - started
    times = record["time"]
    assert record["status"] == "ok", record["error"]
    assert times["load_s"] <= times["to_training_s"]
    assert times["to_training_s"] + times["train_s"] + times["eval_s"] <= whole
    record = run_cell(zero, quiet=True)
    assert record["status"] == "ok" and record["time"]["to_training_s"] is None and record["time"]["load_s"] > 0


def test_every_score_figure_is_in_the_rules_table():
    """figures.SCORES is what the compare/regress rules table lists for the score rule: every score figure the
    registry declares (single, cross-lingual, multi-task) must be in it."""
    declared = [v for v in vars(figures).values() if isinstance(v, figures.Figure) and v.section == "scores"]
    declared += [f for v in vars(figures).values() if isinstance(v, tuple) for f in v
                 if isinstance(f, figures.Figure) and f.section == "scores"]
    assert {f.key for f in declared} == {f.key for f in figures.SCORES}


def test_every_byte_figure_estimate_gives_is_declared_those_no_record_holds_as_estimate_only():
    """Before, fishmask's memory.mask_bytes and memory.selection_peak_bytes were printed by `estimate` but declared
    nowhere (every figure is declared once): now declared, and kept out of records (`recorded` False)."""
    from bench.tools.estimate import estimate, render

    result = estimate("tiny-encoder", "fishmask", 2, 8, settings={"fisher_samples": 2}, step_device="cpu")
    given = {name for name, value in result["memory"].items() if name.endswith("_bytes") and isinstance(value, int)}
    assert given <= {f.name for f in FIGURES.values() if f.section == "memory"}
    assert {"mask_bytes", "selection_peak_bytes"} <= given
    assert not FIGURES["memory.mask_bytes"].recorded and "mask_bytes" not in figures.names("memory")
    printed = render(result)
    assert f"({result['memory']['selection_peak_bytes']:,} bytes)" in printed
