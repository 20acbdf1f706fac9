"""The store and the commands under attack and bad luck (issue 37): files that could stop every command, numbers
that are not results, symlinks, hostile values. Each test failed before its fix."""

from __future__ import annotations

import copy
import json
import math

import pytest

from bench.cli import main
from bench.record import problems
from bench.run.store import Store
from tests.handmade import survey_records, write_store


def _minimal(cell_id: str) -> dict:
    return {"schema_version": 1, "status": "ok",
            "cell": {"id": cell_id, "method": "lora", "model": "m1", "task": "t1", "seed": 1}}


def _with_score(value, cell_id: str) -> dict:
    record = copy.deepcopy(next(r for r in survey_records() if r["cell"]["label"] == "lora"))
    record["cell"]["id"] = cell_id
    record["cell"]["seed"] = 9
    record["scores"]["metrics"]["accuracy"] = value
    return record


@pytest.fixture
def attacked_store(tmp_path):
    """The hand-made store, plus: a 200 KB JSON nested 100,000 deep, a minimal record that the shape check once
    passed (schema_version, cell identity, status ok), and records scoring 1e308, NaN and infinity."""
    root = write_store(tmp_path / "results", survey_records())
    folder = root / "hand"
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "minimal.json").write_text(json.dumps(_minimal("minimal")))
    for name, value in (("huge", 1e308), ("nan", math.nan), ("inf", math.inf)):
        (folder / f"{name}.json").write_text(json.dumps(_with_score(value, name)))
    return root


BAD = {"deep.json", "minimal.json", "huge.json", "nan.json", "inf.json"}


def test_no_file_stops_a_command_and_numbers_that_are_not_results_are_never_ranked(attacked_store, tmp_path, capsys):
    store = Store(attacked_store)
    found, bad = store.scan("hand")
    assert {line.split(":")[0].rsplit("/", 1)[-1] for line in bad} == BAD
    assert not BAD & {f"{cell_id}.json" for cell_id in found}
    assert main(["report", "--suite", "hand", "--results", str(attacked_store), "--out", str(tmp_path / "rep"),
                 "--format", "md,csv"]) == 0
    text = (tmp_path / "rep" / "hand" / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert not any(word in row.lower() for row in rows for word in ("| inf", "| nan", "1e+308"))
    lora = next(row for row in rows if "| lora |" in row)
    assert "86.0 ± 1.0 (n=3)" in lora  # LoRA's three real seeds, as before the attack
    assert "huge.json" in text and "is not a score" in text  # the report names what it skipped
    assert main(["compare", str(attacked_store), str(attacked_store)]) == 0
    assert main(["results", "export", "--suite", "hand", "--results", str(attacked_store),
                 "--out", str(tmp_path / "x.csv")]) == 0
    assert main(["results", "merge", str(attacked_store), "--into", str(tmp_path / "merged")]) == 0
    assert not BAD & {p.name for p in (tmp_path / "merged" / "hand").glob("*.json")}
    err = capsys.readouterr().err
    assert "nested too deep" in err or "not usable" in err


@pytest.mark.parametrize("key, why", [
    ("env", "'env' is not an object"), ("config", "cell.config is not an object"),
    ("suite", "cell.suite is not a string"), ("label", "cell.label is neither null nor a string")])
def test_the_shape_check_asks_for_what_every_reader_reads(key, why):
    record = copy.deepcopy(survey_records()[0])
    assert problems(record) == []
    if key == "env":
        del record["env"]
    else:
        del record["cell"][key]
    assert why in problems(record)


@pytest.mark.parametrize("value", [1e308, -101.0, math.nan, math.inf, -math.inf])
def test_a_score_outside_the_scale_is_not_a_result(value):
    assert any("is not a score" in p for p in problems(_with_score(value, "x")))
    assert problems(_with_score(-37.5, "x")) == []  # a correlation or MCC may be negative


def test_merge_is_idempotent_checks_everything_first_and_names_what_it_refused(tmp_path, capsys):
    records = survey_records()
    a = write_store(tmp_path / "a", records)
    rerun = copy.deepcopy(records[0])
    rerun["created_at"] = "2026-02-01T00:00:00+00:00"
    rerun["scores"]["metrics"]["accuracy"] = 81.0
    b = write_store(tmp_path / "b", [rerun])  # the same cell, recorded differently: a conflict
    stray = copy.deepcopy(records[1])
    stray["cell"]["suite"] = "other"  # lies in hand/ but names another suite
    (b / "hand" / "stray.json").write_text(json.dumps(stray))
    hostile = copy.deepcopy(records[2])
    hostile["cell"]["id"] = "../../escaped"
    (b / "hand" / "hostile.json").write_text(json.dumps(hostile))
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps(records[3]))
    (b / "hand" / "history").mkdir()
    (b / "hand" / "history" / "planted.x.json").symlink_to(outside)
    into = tmp_path / "into"
    assert main(["results", "merge", str(a), str(b), "--into", str(into)]) == 0
    err = capsys.readouterr().err
    history = sorted(p.name for p in (into / "hand" / "history").iterdir())
    assert len(history) == 1 and "conflict hand/" in err
    assert "names suite 'other'" in err and "unsafe suite or cell id" in err and "planted.x.json" in err
    assert not (into / "other").exists() and not (tmp_path / "escaped.json").exists()
    assert len(list((into / "hand").glob("*.json"))) == len(records)
    assert main(["results", "merge", str(a), str(b), "--into", str(into)]) == 0  # again: nothing new
    assert sorted(p.name for p in (into / "hand" / "history").iterdir()) == history
    assert "0 records added" in capsys.readouterr().out


def test_a_symlinked_record_is_not_read(tmp_path):
    root = write_store(tmp_path / "results", survey_records()[:1])
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(survey_records()[1]))
    (root / "hand" / "linked.json").symlink_to(outside)
    found, bad = Store(root).records("hand")
    assert len(found) == 1 and any("linked.json: a symbolic link" in line for line in bad)


def test_a_report_never_writes_through_a_symlink(tmp_path, capsys):
    root = write_store(tmp_path / "results", survey_records())
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    folder = tmp_path / "reports" / "hand"
    (folder / "csv").mkdir(parents=True)
    (folder / "report.md").symlink_to(target)
    (folder / "csv" / "survey-m1.csv").symlink_to(target)
    assert main(["report", "--suite", "hand", "--results", str(root), "--out", str(tmp_path / "reports"),
                 "--format", "md,csv"]) == 0
    assert target.read_text() == "keep me"
    assert not (folder / "report.md").is_symlink() and (folder / "report.md").read_text().startswith("# hand")
    assert "report.md: a symbolic link in the report folder, removed" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "hand").symlink_to(elsewhere)
    assert main(["report", "--suite", "hand", "--results", str(root), "--out", str(tmp_path / "out2")]) == 2
    assert "is a symbolic link" in capsys.readouterr().err and not any(elsewhere.iterdir())


def _jsonl_task(tmp_path, train: bytes, name: str = "train.jsonl") -> str:
    (tmp_path / name).write_bytes(train)
    (tmp_path / "eval.jsonl").write_text('{"text": "good", "label": 1}\n')
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: mine\n    type: classification\n"
        f"    source: {{files: {{train: {name}, eval: eval.jsonl}}}}\n"
        "    text: [text]\n    label: label\n    labels: [negative, positive]\n    metrics: [accuracy]\n")
    return str(tmp_path / "tasks.yaml")


def _check(tmp_path, tasks: str) -> None:
    from bench.tasks.data import check_available
    from bench.tasks.registry import registry

    check_available(registry([tasks])["mine"], None)


def test_undecodable_files_are_bad_input_naming_the_file(tmp_path, capsys):
    import gzip

    from bench.errors import BadInput

    suite = tmp_path / "latin1.yaml"
    suite.write_bytes("name: x\ndescription: caf\xe9\n".encode("latin-1"))
    assert main(["run", "--suite", str(suite), "--dry-run"]) == 2
    assert f"{suite}:2: not UTF-8 text (byte 0xe9" in capsys.readouterr().err
    suite.write_bytes("name: x\n".encode("utf-16"))
    assert main(["run", "--suite", str(suite), "--dry-run"]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    good = b'{"text": "fine", "label": 0}\n'
    latin1 = good + b'{"text": "caf\xe9", "label": 1}\n'
    for data, name, message in ((latin1, "train.jsonl", "train.jsonl:2: not UTF-8"),
                                (good, "train.jsonl.gz", "cannot read this file"),
                                (gzip.compress(good * 50)[:40], "train.jsonl.gz", "cannot read this file")):
        with pytest.raises(BadInput) as e:
            _check(tmp_path, _jsonl_task(tmp_path, data, name))
        assert message in e.value.render(), e.value.render()


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    suite = tmp_path / "bomb.yaml"
    suite.write_text("\n".join(lines) + "\nname: bomb\n")
    assert len(suite.read_bytes()) < 1000
    assert main(["run", "--suite", str(suite), "--dry-run"]) == 2
    assert "expands past 200,000 values" in capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    ("cell_timeout_s: .nan", "'cell_timeout_s' must be a finite number"),
    ("train: {max_steps: 2, max_grad_norm: .nan}", "'max_grad_norm' must be a finite number"),
    ("train: {max_steps: 2, weight_decay: -1}", "'weight_decay' must not be negative"),
    ("threads: 1000000", "'threads' must be in [1, 4096]"),
    ("train: {max_steps: 2, lr: .inf}", "'lr' must be a finite number"),
    ("train: {epochs: .nan}", "'epochs' must be a finite number"),
    ("train: {max_steps: 2, epochs: 3}", "'max_steps' and 'epochs' are both given here"),
])
def test_values_that_would_do_damage_are_refused_before_work(tmp_path, capsys, setting, message):
    suite = tmp_path / "bad.yaml"
    suite.write_text(f"name: bad\nmethods: [lora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n{setting}\n")
    assert main(["run", "--suite", str(suite), "--dry-run", "--results", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_a_huge_method_setting_and_bad_tolerances_are_refused(tmp_path, capsys):
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: bad\nmethods: [{name: lora, overrides: {r: 1000000000}}]\nmodels: [tiny-encoder]\n"
                     "tasks: [synth-polarity]\ntrain: {max_steps: 2}\n")
    assert main(["run", "--suite", str(suite), "--dry-run"]) == 2
    assert "'r' = 1,000,000,000 is beyond" in capsys.readouterr().err
    from bench.errors import BadInput
    from bench.tools.regress import load_tolerances

    for text, message in (("score_abs: -1", "'score_abs' must be >= 0"), ("memory_rtol: .nan", "finite number"),
                          ("time_warn_ratio: 0.5", "a factor >= 1"),
                          ("score_abs_per_metric: {accuracy: -2}", "'accuracy' must be >= 0")):
        (tmp_path / "tol.yaml").write_text(text + "\n")
        with pytest.raises(BadInput, match=message.replace("(", r"\(")):
            load_tolerances(str(tmp_path / "tol.yaml"))


def test_a_short_row_and_a_late_bad_label_are_found_before_work(tmp_path):
    from bench.errors import BadInput

    rows = "".join(f"{i % 2}\tsentence {i}\n" for i in range(300))
    (tmp_path / "eval.tsv").write_text(rows)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("tasks:\n  - name: mine\n    type: classification\n"
                     "    source: {files: {train: train.tsv, eval: eval.tsv}, header: false,\n"
                     "             columns: [label, sentence]}\n"
                     "    text: [sentence]\n    label: label\n    labels: [negative, positive]\n"
                     "    metrics: [accuracy]\n")
    (tmp_path / "train.tsv").write_text(rows + "1\n")  # line 301: no text
    with pytest.raises(BadInput, match=r"train.tsv:301: a row with 1 field\(s\) where the table has 2 columns"):
        _check(tmp_path, str(tasks))
    (tmp_path / "train.tsv").write_text(rows + "7\tlate\n")  # a label no class has, after row 100
    with pytest.raises(BadInput, match="label values 7 are neither"):
        _check(tmp_path, str(tasks))


def test_a_json_row_without_its_text_is_found_before_work(tmp_path):
    from bench.errors import BadInput

    rows = b'{"text": "good", "label": 1}\n{"text": null, "label": 0}\n'
    with pytest.raises(BadInput, match=r"train.jsonl:2: row 2 has no value in column 'text'"):
        _check(tmp_path, _jsonl_task(tmp_path, rows))


def test_labels_that_are_formulas_or_html_stay_text_in_every_format(tmp_path):
    import csv as csv_module

    records = survey_records()
    for r in records:
        if r["cell"]["label"] == "lora":
            r["cell"]["label"] = '=HYPERLINK("http://x","y")<script>'
    root = write_store(tmp_path / "results", records)
    assert main(["report", "--suite", "hand", "--results", str(root), "--out", str(tmp_path / "rep"),
                 "--format", "md,csv"]) == 0
    md = (tmp_path / "rep" / "hand" / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md
    cells = [c for p in (tmp_path / "rep" / "hand" / "csv").glob("*.csv")
             for row in csv_module.reader(p.open()) for c in row]
    assert not any(c.startswith(("=", "+", "@")) for c in cells)
    assert "'=HYPERLINK(\"http://x\",\"y\")<script>" in cells
    from bench.fmt import spreadsheet_safe

    assert spreadsheet_safe("-5.2") == "-5.2" and spreadsheet_safe("-x") == "'-x"  # a negative number stays one
    assert main(["results", "export", "--suite", "hand", "--results", str(root), "--out", str(tmp_path / "x.csv")]) == 0
    exported = [c for row in csv_module.reader((tmp_path / "x.csv").open()) for c in row]
    assert not any(c.startswith("=") for c in exported) and "'=HYPERLINK(\"http://x\",\"y\")<script>" in exported


def test_unwritable_outputs_are_exit_2_naming_the_path_before_any_work(tmp_path, capsys):
    from tests.conftest import TINY_SUITE

    root = write_store(tmp_path / "results", survey_records())
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    for args, flag in ((["run", "--suite", str(suite), "--results", str(a_file)], "--results"),
                       (["run", "--suite", str(suite), "--results", str(a_file / "below")], "--results"),
                       (["report", "--suite", "hand", "--results", str(root), "--out", str(a_file)], "--out"),
                       (["results", "export", "--suite", "hand", "--results", str(root), "--out", str(tmp_path)],
                        "--out"),
                       (["results", "export", "--suite", "hand", "--results", str(root), "--format", "parquet",
                         "--out", str(a_file / "x.parquet")], "--out"),
                       (["results", "merge", str(root), "--into", str(a_file)], "--into")):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert f"error: {flag}: {a_file if 'export' not in args or 'parquet' in args else tmp_path}" in err, err
    assert a_file.read_text() == "x"


def test_a_store_that_fills_up_keeps_the_finished_record_and_the_rerun_stores_it_without_training(
        tmp_path, monkeypatch, capsys):
    import errno

    from tests.conftest import TINY_SUITE

    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE.replace("  - {name: full, train: {lr: 1.0e-3}}\n", "").replace("max_steps: 20",
                                                                                                "max_steps: 2"))
    results = tmp_path / "results"
    real_write = Store.write

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path(record["cell"]["suite"], "x")))

    monkeypatch.setattr(Store, "write", full)
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the results store: No space left on device" in err and "is kept in" in err
    assert "Traceback" not in err and not list((results / "tiny").glob("*.json"))
    monkeypatch.setattr(Store, "write", real_write)  # space again
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "adopted tiny/" in err and "1 already recorded" in out  # stored from the spool, not trained again
    (record,) = [json.loads(p.read_text()) for p in (results / "tiny").glob("*.json")]
    assert record["status"] == "ok"


def _tmpfs(path, size: str) -> bool:
    """Mount a small tmpfs at `path` (root only); under CI=true (root there) a failure to mount fails the test."""
    import os
    import subprocess

    if os.geteuid() != 0:
        return False
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0 and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI runs as root and must run the disk-full test, but tmpfs did not mount: {mounted.stderr}")
    return mounted.returncode == 0


def test_a_full_or_read_only_disk_is_exit_2_naming_the_path(tmp_path, capsys):
    """On a real tmpfs (root only: CI runs as root): full, then read-only. No traceback, nothing lost."""
    import subprocess

    from tests.conftest import TINY_SUITE

    disk = tmp_path / "disk"
    if not _tmpfs(disk, "256k"):
        pytest.skip("needs root and tmpfs to mount a small disk")
    try:
        suite = tmp_path / "tiny.yaml"
        suite.write_text(TINY_SUITE.replace("max_steps: 20", "max_steps: 2"))
        (disk / "filler").write_bytes(b"")
        with pytest.raises(OSError):
            with (disk / "filler").open("wb") as f:
                while True:
                    f.write(b"\0" * 65536)
        assert main(["run", "--suite", str(suite), "--results", str(disk / "results"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and "Traceback" not in err
        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert main(["run", "--suite", str(suite), "--results", str(disk / "results"), "--quiet"]) == 2
        assert f"--results: cannot write under {disk / 'results'}" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(disk)], check=False)
