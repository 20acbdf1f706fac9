"""The figure registry: the docs, the record and both diff commands read the same declarations."""

import re
from pathlib import Path

import pytest

from bench import figures
from bench.figures import FIGURES, Tolerances, judge

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_docs_tables_are_the_registry():
    text = (DOCS / "measurement.md").read_text()
    for section in figures.SECTIONS:
        assert figures.markdown_table(section) in text, f"docs/measurement.md: {section} table out of date (make docs)"
    assert figures.rules_table() in text
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
        assert f.section in figures.SECTIONS and f.rule in figures.RULES
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
    cuda_only = {"memory.device_peak_allocated_bytes", "memory.device_peak_reserved_bytes",
                 "memory.eval_peak_allocated_bytes", "memory.nvml_peak_bytes", "memory.device_other_bytes",
                 "time.mfu"}
    if torch.cuda.is_available():
        cuda_only = {"memory.nvml_peak_bytes", "time.mfu"}  # NVML is an extra; MFU needs a known GPU
    optional = {"time.compile_s"}  # only with train.compile (tests/test_train.py)
    missing = {key for key, f in FIGURES.items() if record[f.section][f.name] is None} - cuda_only - optional
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
