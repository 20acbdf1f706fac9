"""peft-bench compare: which changes between two stores are flagged, warned about, or within tolerance."""

import copy
import json

from bench.cli import main
from bench.judging import Tolerances
from bench.report.compare import compare
from tests.handmade import survey_records, write_store


def stores(tmp_path):
    a = survey_records()
    b = copy.deepcopy(a)
    by_id = {r["cell"]["id"]: r for r in b}
    by_id["full-m1-t1-1"]["params"]["trainable"] += 1  # a count: exact, flagged
    by_id["full-m1-t1-1"]["scores"]["metrics"]["accuracy"] += 0.4  # within 0.5 points
    by_id["full-m1-t1-2"]["scores"]["metrics"]["accuracy"] += 0.6  # beyond
    by_id["full-m1-t1-2"]["time"]["train_s"] *= 2  # time: a warning only
    by_id["full-m1-t1-3"]["memory"]["peak_bytes"] = int(by_id["full-m1-t1-3"]["memory"]["peak_bytes"] * 1.05)
    by_id["lora-m1-t1-1"]["memory"]["peak_bytes"] *= 2  # measured memory beyond 10 %: machine-dependent, warns
    by_id["lora-m1-t2-3"].update(status="ok", error=None)  # failed -> ok
    by_id["lora-m1-t2-3"]["scores"]["metrics"] = {"chrf": 71.0}
    b = [r for r in b if r["cell"]["id"] != "bitfit-m1-t1-3"]  # only in A
    return write_store(tmp_path / "a", a), write_store(tmp_path / "b", b)


def verdicts(result) -> dict:
    return {(c.id, ch.figure): ch.verdict for c in result.cells for ch in c.changes if ch.verdict != "same"}


def test_flags_follow_the_tolerances(tmp_path):
    a, b = stores(tmp_path)
    result = compare(a, b, "hand")
    assert verdicts(result) == {
        ("full-m1-t1-1", "params.trainable"): "flag",
        ("full-m1-t1-1", "scores.accuracy"): "ok",
        ("full-m1-t1-2", "scores.accuracy"): "flag",
        ("full-m1-t1-2", "time.train_s"): "warn",
        ("full-m1-t1-3", "memory.peak_bytes"): "ok",
        ("lora-m1-t1-1", "memory.peak_bytes"): "warn",
        ("lora-m1-t2-3", "status"): "flag",
        ("lora-m1-t2-3", "scores.chrf"): "flag",  # appeared: null -> 71
    }
    assert result.only_a == ["hand/bitfit-m1-t1-3"] and result.only_b == []
    assert len(result.cells) == len(survey_records()) - 1
    looser = compare(a, b, "hand", Tolerances(score_abs=1.0, memory_rtol=1.5, time_warn_ratio=3))
    assert {k for k, v in verdicts(looser).items() if v != "ok"} == {
        ("full-m1-t1-1", "params.trainable"), ("lora-m1-t2-3", "status"), ("lora-m1-t2-3", "scores.chrf")}


def test_compare_cli_text_and_json(tmp_path, capsys):
    a, b = stores(tmp_path)
    assert main(["compare", str(a), str(b / "hand")]) == 0  # a store root, or one suite's folder
    out = capsys.readouterr().out
    assert "FLAG params.trainable: 1000 -> 1001 (+1, +0.1%)" in out
    assert "warn time.train_s: 12 -> 24 (+12, +100.0%)" in out
    assert "warn memory.peak_bytes:" in out
    assert "4 flagged change(s), 2 warning(s); 1 only in A, 0 only in B" in out
    assert main(["compare", str(a), str(b), "--suite", "hand", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["flagged"] == 4 and data["warnings"] == 2 and data["tolerances"]["score_abs"] == 0.5


def test_compare_missing_folder_exits_2(tmp_path, capsys):
    a, _ = stores(tmp_path)
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "RESULTS_B" in capsys.readouterr().err


def test_compare_and_regress_judge_a_figure_alike(tmp_path):
    """One rule per figure: activation bytes are exact on one torch version (compare used to let them
    move 10 % as if measured, while regress required them equal), a measured peak only warns in both."""
    from bench.tools.regress import compare as gate_compare
    from bench.tools.regress import make_baseline

    a = survey_records()
    b = copy.deepcopy(a)
    one = next(r for r in b if r["cell"]["id"] == "full-m1-t1-1")
    one["memory"]["activation_bytes"] = int(one["memory"]["activation_bytes"] * 1.05)
    one["memory"]["peak_bytes"] = int(one["memory"]["peak_bytes"] * 1.5)
    store_verdicts = verdicts(compare(write_store(tmp_path / "a", a), write_store(tmp_path / "b", b), "hand"))
    gate = {(f.figure, f.level) for f in gate_compare(make_baseline("hand", a, {}), b, Tolerances()).findings}
    assert store_verdicts[("full-m1-t1-1", "memory.activation_bytes")] == "flag"
    assert store_verdicts[("full-m1-t1-1", "memory.peak_bytes")] == "warn"
    assert {("memory.activation_bytes", "fail"), ("memory.peak_bytes", "warn")} <= gate
    one["env"] = {**(one.get("env") or {}), "torch": "9.9.9"}  # another torch: activation bytes within 5 % pass
    across = verdicts(compare(tmp_path / "a", write_store(tmp_path / "c", b), "hand"))
    assert across[("full-m1-t1-1", "memory.activation_bytes")] == "ok"
