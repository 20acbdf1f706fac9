"""A user's own data: table formats, checks before any work, errors that name the file and its columns."""

from __future__ import annotations

import gzip
import json

import pytest

from bench.cli import main
from bench.errors import BadInput
from bench.tasks.data import check_available, load_rows
from bench.tasks.registry import registry
from bench.tasks.schema import load_task_file

ROWS = [(0, "bad awful dull"), (1, "good fine great"), (0, "sad\tpoor"), (1, 'nice "kind" warm')]


def tsv_task(tmp_path, extra: str = "", text: str = "sentence", suffix: str = ".tsv") -> str:
    for split in ("train", "eval"):
        lines = "".join(f"{label}\t{sentence}\n" for label, sentence in ROWS * 4)
        (tmp_path / f"{split}{suffix}").write_text(lines)
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: mine\n    type: classification\n"
        f"    source: {{files: {{train: train{suffix}, eval: eval{suffix}}}, header: false, columns: [label, sentence],"
        f" quoting: none{extra}}}\n"
        f"    text: [{text}]\n    label: label\n    labels: [negative, positive]\n    metrics: [accuracy]\n")
    return str(tmp_path / "tasks.yaml")


def test_a_headerless_tsv_reads_with_its_tabs_and_quotes(tmp_path):
    task = registry([tsv_task(tmp_path)])["mine"]
    (tmp_path / "train.tsv").write_text("".join(f"{y}\t{t.replace(chr(9), ' ')}\n" for y, t in ROWS * 4))
    rows = load_rows(task, "train")
    assert len(rows) == 16 and rows[3] == {"label": 1, "sentence": 'nice "kind" warm'}  # quotes kept as text
    # the third row's text holds a tab: with two named columns it is one field too many, said with the file
    with pytest.raises(BadInput, match="eval.tsv"):
        check_available(task, None)


def test_gzip_tables_and_json_lines(tmp_path):
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"text": t, "label": y}) for y, t in ROWS) + "\n")
    with gzip.open(tmp_path / "eval.csv.gz", "wt") as f:
        f.write("text,label\n" + "".join(f'"{t}",{y}\n' for y, t in ROWS))
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: zipped\n    type: classification\n"
        "    source: {files: {train: train.jsonl.gz, eval: eval.csv.gz}}\n"
        "    text: [text]\n    label: label\n    labels: ['0', '1']\n    metrics: [accuracy]\n")
    task = registry([tmp_path / "tasks.yaml"])["zipped"]
    check_available(task, None)
    assert load_rows(task, "train")[1] == {"text": "good fine great", "label": 1}
    assert load_rows(task, "eval")[2]["text"] == "sad\tpoor"


@pytest.mark.parametrize("source,message", [
    ("{files: {train: train.xlsx}}", "supported files are .jsonl, .json, .csv, .tsv, .txt, .parquet"),
    ("{files: {train: a.tsv}, header: false}", "'header: false' needs 'columns'"),
    ("{files: {train: a.tsv}, columns: [a, b]}", "add 'header: false'"),
    ("{files: {train: a.tsv}, delimiter: '::'}", "must be one character"),
])
def test_table_options_are_checked_when_the_task_is_read(tmp_path, source, message):
    (tmp_path / "tasks.yaml").write_text(
        f"tasks:\n  - name: t\n    type: classification\n    source: {source}\n"
        "    text: [s]\n    label: l\n    labels: [a, b]\n    metrics: [accuracy]\n")
    with pytest.raises(BadInput, match=message) as info:
        load_task_file(tmp_path / "tasks.yaml")
    assert info.value.where.startswith(str(tmp_path / "tasks.yaml") + ":4")


def test_a_bare_list_says_what_a_task_file_looks_like(tmp_path):
    (tmp_path / "tasks.yaml").write_text("- name: t\n  type: classification\n")
    with pytest.raises(BadInput, match="expected a mapping with a top-level `tasks:` list"):
        load_task_file(tmp_path / "tasks.yaml")


def suite(tmp_path, task_file: str) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: own\nmethods: [{{name: full, train: {{lr: 1.0e-3}}}}]\nmodels: [tiny-encoder]\n"
                    f"tasks: [mine]\ntask_files: ['{task_file}']\n"
                    "train: {batch_size: 4, max_steps: 2, max_length: 16, eval_batch_size: 16}\n")
    return str(path)


@pytest.mark.slow
def test_a_headerless_tsv_task_runs_end_to_end(tmp_path, capsys):
    for split in ("train", "eval"):  # no tab inside the text: every row has its two fields
        (tmp_path / f"{split}.tsv").write_text("".join(f"{y}\t{t.replace(chr(9), ' ')}\n" for y, t in ROWS * 4))
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: mine\n    type: classification\n"
        "    source: {files: {train: train.tsv, eval: eval.tsv}, header: false, columns: [label, sentence]}\n"
        "    text: [sentence]\n    label: label\n    labels: [negative, positive]\n    metrics: [accuracy]\n")
    results = tmp_path / "results"
    assert main(["run", "--suite", suite(tmp_path, str(tmp_path / "tasks.yaml")), "--results", str(results),
                 "--quiet", "--threads", "1"]) == 0
    assert "1 ok" in capsys.readouterr().out
    (record,) = [json.loads(p.read_text()) for p in (results / "own").glob("*.json")]
    assert record["status"] == "ok" and record["scores"]["n_examples"] == 16
    assert record["env"]["threads"] == 1  # --threads, recorded


def test_threads_must_be_positive(tmp_path, capsys):
    assert main(["run", "--suite", suite(tmp_path, tsv_task(tmp_path)), "--threads", "0", "--dry-run"]) == 2
    assert "--threads must be in [1, 4096]" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    (("text: [sentence]", "text: [text]"), "no column 'text'; the file's columns are 'label', 'sentence'"),
    (("labels: [negative, positive]", "labels: [a, b, c]"), None),
    (("labels: [negative, positive]", "labels: [only]"), "label values 1 are neither class indices 0..0"),
])
def test_data_problems_exit_2_before_any_work(tmp_path, capsys, change, message):
    task_file = tsv_task(tmp_path, text="sentence")
    (tmp_path / "eval.tsv").write_text("".join(f"{y}\t{t.replace(chr(9), ' ')}\n" for y, t in ROWS))
    (tmp_path / "train.tsv").write_text("".join(f"{y}\t{t.replace(chr(9), ' ')}\n" for y, t in ROWS))
    text = (tmp_path / "tasks.yaml").read_text().replace(*change)
    (tmp_path / "tasks.yaml").write_text(text)
    results = tmp_path / "results"
    code = main(["run", "--suite", suite(tmp_path, task_file), "--results", str(results), "--quiet"])
    err = capsys.readouterr().err
    if message is None:  # three label names for 0/1 data: valid
        assert code == 0
        return
    assert code == 2 and message in err
    assert "train.tsv" in err and f"task 'mine' defined at {tmp_path / 'tasks.yaml'}:2" in err
    assert not results.exists()  # nothing ran, nothing was written


def test_an_empty_split_is_refused(tmp_path, capsys):
    task_file = tsv_task(tmp_path)
    (tmp_path / "train.tsv").write_text("")
    code = main(["run", "--suite", suite(tmp_path, task_file), "--results", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "train.tsv" in capsys.readouterr().err
