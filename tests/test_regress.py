"""The regression gate: rules on hand-made records, and a regression injected into a real run."""

import pytest

from bench.cli import main
from bench.errors import BadInput
from bench.judging import Tolerances
from bench.run.executors.local import LocalExecutor
from bench.tools.regress import compare, gate, is_fresh, load_tolerances, make_baseline, read_baseline


def record(cid="c1", label="lora", trainable=100, accuracy=80.0, activation=5000, torch_version="2.13.0",
           train_s=10.0, status="ok"):
    return {"cell": {"id": cid, "label": label, "method": label, "model": "tiny-encoder", "task": "synth-polarity",
                     "seed": 1},
            "status": status, "env": {"torch": torch_version},
            "params": {"total": 1000, "trainable": trainable, "stored": trainable, "stored_bytes": 4 * trainable},
            "memory": {"weights_bytes": 4000, "grad_bytes": 4 * trainable, "activation_bytes": activation},
            "flops": {}, "time": {"train_s": train_s},
            "scores": {"main_metric": "accuracy", "metrics": {"accuracy": accuracy}}}


def verdict(new, old=None, tolerances=Tolerances()):
    baseline = make_baseline("t", old or [record()], {})
    return compare(baseline, new, tolerances)


def test_unchanged_passes_and_noise_only_warns():
    v = verdict([record(train_s=30.0)])
    assert not v.failed and [f.level for f in v.findings] == ["warn"] and v.findings[0].figure == "time.train_s"
    assert v.line().startswith("PASS")
    from bench.tools.regress import render

    assert render(v, markdown=True).startswith("### Regression gate — PASS") and "| WARN |" in render(v, markdown=True)
    assert v.to_json()["verdict"] == "pass" and v.to_json()["findings"][0]["figure"] == "time.train_s"


def test_a_figure_warning_in_many_cells_is_one_row():
    from bench.tools.regress import render

    old = [record(cid=f"c{i}", label=f"m{i}", train_s=10.0) for i in range(3)]
    new = [record(cid=f"c{i}", label=f"m{i}", train_s=t) for i, t in enumerate((4.0, 5.0, 10.0))]
    v = verdict(new, old)
    assert [f.level for f in v.findings] == ["warn", "warn"]  # every finding stays in the verdict (and --json)
    text = render(v)
    assert "2 cells  time.train_s" in text and "×0.40 to ×0.50" in text and "m0 ·" not in text
    assert render(verdict([record(train_s=30.0)])).count("time.train_s") == 1  # one cell: its own row
    assert "lora · tiny-encoder" in render(verdict([record(train_s=30.0)]))


def test_one_more_trainable_tensor_fails_naming_cell_and_figure():
    v = verdict([record(trainable=164)])
    assert v.failed
    figures = {f.figure for f in v.findings if f.level == "fail"}
    assert {"params.trainable", "params.stored", "params.stored_bytes", "memory.grad_bytes"} <= figures
    assert all(f.cell == "lora · tiny-encoder · synth-polarity · seed 1" for f in v.findings)
    assert v.findings[0].level == "fail"  # worst first


def test_scores_within_tolerance_and_a_tolerance_file(tmp_path):
    assert not verdict([record(accuracy=80.9)]).failed
    assert verdict([record(accuracy=78.5)]).failed
    path = tmp_path / "tol.yaml"
    path.write_text("score_abs_per_metric: {accuracy: 2.0}\n")
    assert not verdict([record(accuracy=78.5)], tolerances=load_tolerances(str(path))).failed
    path.write_text("score_abs: 0.1\n")
    assert verdict([record(accuracy=80.2)], tolerances=load_tolerances(str(path))).failed
    path.write_text("score_abs_per_metric: {acuracy: 2}\n")
    with pytest.raises(BadInput) as info:
        load_tolerances(str(path))
    assert "did you mean 'accuracy'" in info.value.message
    path.write_text("score_tol: 1\n")
    with pytest.raises(BadInput) as info:
        load_tolerances(str(path))
    assert "did you mean 'score_abs'" in info.value.message


def test_activation_bytes_exact_on_one_torch_version_tolerant_across():
    assert verdict([record(activation=5001)]).failed
    assert not verdict([record(activation=5100, torch_version="2.14.0")]).failed
    assert verdict([record(activation=6000, torch_version="2.14.0")]).failed


def test_missing_and_failed_cells_fail_new_cells_are_reported():
    v = verdict([record(cid="other")])
    assert v.failed and {f.level for f in v.findings} == {"fail", "new"}
    v = verdict([record(status="failed")])
    assert v.failed and v.findings[0].figure == "status"
    # a baseline cell that was unsupported and runs now is news, not a regression
    v = verdict([record()], old=[record(status="unsupported")])
    assert not v.failed and [(f.figure, f.level) for f in v.findings] == [("status", "warn")]


def test_reuse_takes_only_records_of_this_commit_from_clean_trees():
    made = {"env": {"git_sha": "abc", "git_dirty": False}}
    assert is_fresh(made, "abc", False)
    assert not is_fresh(made, "abc", True)  # local edits since: the code differs from what made it
    assert not is_fresh(made, "def", False) and not is_fresh(made, None, None) and not is_fresh(None, "abc", False)
    assert not is_fresh({"env": {"git_sha": "abc", "git_dirty": True}}, "abc", False)


def test_baseline_file_errors_are_bad_input(tmp_path):
    with pytest.raises(BadInput):
        read_baseline(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BadInput):
        read_baseline(tmp_path / "bad.json")


GATE_SUITE = """\
name: gate
methods: [{name: adapter-houlsby, train: {lr: 5.0e-3}}, {name: lora, train: {lr: 5.0e-3}}]
models: [tiny-encoder]
tasks: [synth-polarity]
train: {batch_size: 8, max_steps: 5, max_length: 32, max_eval_samples: 32}
"""


def test_an_injected_regression_fails_the_gate(write_suite, tmp_path, monkeypatch):
    suite, baseline = str(write_suite(GATE_SUITE)), str(tmp_path / "baseline.json")
    inline = LocalExecutor("inline", quiet=True)  # in-process, so the patch below reaches the cells
    assert gate(suite, baseline, str(tmp_path / "r"), Tolerances(), inline, update=True, quiet=True) is None
    unchanged = gate(suite, baseline, str(tmp_path / "r"), Tolerances(), inline, quiet=True)
    assert not unchanged.failed and unchanged.compared == 2

    from bench.layers import bottleneck

    width = bottleneck.bottleneck_width
    monkeypatch.setattr(bottleneck, "bottleneck_width", lambda dim, config: 2 * width(dim, config))  # doubled adapters
    broken = gate(suite, baseline, str(tmp_path / "r"), Tolerances(), inline, quiet=True)
    assert broken.failed
    failing = {(f.cell.split(" · ")[0], f.figure) for f in broken.findings if f.level == "fail"}
    assert ("adapter-houlsby", "params.trainable") in failing
    assert not any(cell == "lora" for cell, _ in failing)  # the other method is untouched


def test_cli_exit_codes(write_suite, tmp_path, capsys):
    suite = str(write_suite(GATE_SUITE))
    assert main(["regress", "--suite", suite, "--baseline", str(tmp_path / "none.json")]) == 2
    assert "make one with --update" in capsys.readouterr().err
    (tmp_path / "tol.yaml").write_text("time_warn: 2\n")
    assert main(["regress", "--suite", suite, "--baseline", str(tmp_path / "none.json"),
                 "--tolerances", str(tmp_path / "tol.yaml")]) == 2
