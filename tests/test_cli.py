"""The command line: exit codes and messages."""

import json

import pytest

from bench.cli import main
from tests.conftest import TINY_SUITE


def test_typo_in_methods_exits_2_naming_the_method(tmp_path, capsys):
    code = main(["run", "--suite", "smoke", "--methods", "lorra", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "'lora'" in err and "--methods" in err
    assert not (tmp_path / "r").exists()  # nothing ran


def test_malformed_suite_exits_2_with_file_and_line(write_suite, capsys):
    path = write_suite(TINY_SUITE.replace("seeds: [1]", "seeds: [1"))
    assert main(["run", "--suite", str(path), "--dry-run"]) == 2
    assert f"{path}:" in capsys.readouterr().err


def test_unknown_suite_exits_2(capsys):
    assert main(["run", "--suite", "smok", "--dry-run"]) == 2
    assert "did you mean 'smoke'" in capsys.readouterr().err


def test_dry_run_prints_one_line_per_cell(write_suite, capsys):
    assert main(["run", "--suite", str(write_suite(TINY_SUITE)), "--dry-run", "--seeds", "1,2"]) == 0
    *lines, total = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(len(line.split()[0]) == 12 and "train FLOPs" in line for line in lines)
    assert total.startswith("4 cells, ")


@pytest.mark.parametrize("methods, cells, records", [("[prefix-tuning-peft]", "1 cell", "1 ok record"),
                                                     ("[lora, prefix-tuning-peft]", "2 cells", "2 ok records")])
def test_the_plans_summary_counts_in_words(write_suite, tmp_path, capsys, monkeypatch, methods, cells, records):
    """The dry-run's last line says '1 cell', '1 cell unknown', '1 ok record' (it said '1 cells unknown': `run
    --suite llm --dry-run --gpu h200`). Prefix tuning (peft's) is unknown under gradient checkpointing; the rate is
    the records' (as many as the cells, the reading made up here)."""
    from bench.tools import plan_cost

    path = write_suite(f"name: words\nmethods: {methods}\nmodels: [tiny-gpt2]\ntasks: [synth-digits]\n"
                       "train: {max_steps: 10, batch_size: 8, max_length: 16, gradient_checkpointing: true}\n")
    n = int(cells.split()[0])
    monkeypatch.setattr(plan_cost, "measured_rate", lambda store, suite: (1e12, 2.0, n))
    assert main(["run", "--suite", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    total = capsys.readouterr().out.splitlines()[-1]
    assert total.startswith(f"{cells}, ") and "(1 cell unknown, not counted); " in total, total
    assert f"(the median of {records} of words in " in total, total


def test_list_methods_json_has_families(capsys):
    assert main(["list", "methods", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    names = {e["name"]: e for e in entries}
    assert {"full", "lora", "bitfit", "ia3", "prompt-tuning"} <= set(names)
    assert names["lora"]["family"] == "reparameterized" and names["bitfit"]["family"] == "partial"
    assert names["oft"]["one_nonzero"] == [["oft_block_size", "r"]] and names["lora"]["one_nonzero"] == []
    assert all(e["description"] and e["paper"] for e in entries)


def test_list_models_tasks_suites(capsys):
    for what in ("models", "tasks", "suites"):
        assert main(["list", what, "--json"]) == 0
        entries = json.loads(capsys.readouterr().out)
        assert entries and all(e["name"] and "description" in e for e in entries)


def test_report_without_records_exits_2(tmp_path, capsys):
    assert main(["report", "--suite", "smoke", "--results", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err


def test_cache_clear_removes_only_cache_entries(tmp_path, monkeypatch, capsys):
    from bench.cli import main
    from bench.tasks import cache

    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))
    cache.cached({"k": 1}, lambda: [1, 2, 3])
    cache.cached({"k": 2}, lambda: [4], kind="plan")
    (cache.root() / "keep.txt").write_text("not ours")
    (cache.root() / "notes.json").write_text("{}")  # a .json the cache did not write
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (cache.root("plan") / ("a" * 24 + ".json")).symlink_to(outside)  # named like an entry, but a link
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "features: 1 file(s)" in out and "plan: 1 file(s)" in out
    assert main(["cache", "clear"]) == 0 and "removed 2 cache file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in cache.root().iterdir()) == ["keep.txt", "notes.json"]
    assert [p.name for p in cache.root("plan").iterdir()] == ["a" * 24 + ".json"] and outside.exists()
