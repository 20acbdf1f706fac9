"""Training curves: written as the cell trains, bounded, readable after a kill, and what the report draws from."""

import json

import pytest

from bench.cell.curves import MAX_POINTS, CurveWriter, read_curve
from bench.report.curves import loss_drop_step, score_step


def test_points_are_window_means_and_bounded(tmp_path):
    path = tmp_path / "c.jsonl"
    steps = 2 * MAX_POINTS + 1  # every 3 steps: ceil(1001 / 500)
    writer = CurveWriter(path, steps, "abc")
    losses = [float(i) for i in range(1, steps + 1)]
    writer.steps(1, losses[:7], [0.1] * 7, [2.0] * 7, [10] * 7, 7.0)  # one read of 7 steps
    writer.steps(8, losses[7:], [0.2] * (steps - 7), [None] * (steps - 7), [10] * (steps - 7), float(steps - 7))
    writer.evaluation(500, 71.5)
    writer.close()
    curve = read_curve(path)
    assert curve["every"] == 3 and len(curve["train"]) == 334 <= MAX_POINTS  # 333 full windows + the last step
    first = curve["train"][0]
    assert first == {"step": 3, "loss": 2.0, "lr": 0.1, "grad_norm": 2.0, "tokens_per_s": 10.0}  # (1+2+3)/3
    assert curve["train"][2]["step"] == 9 and curve["train"][2]["grad_norm"] == 2.0  # steps 7 (2.0), 8, 9 (none)
    assert curve["train"][3]["grad_norm"] is None and curve["train"][-1]["step"] == steps
    assert curve["evals"] == [{"step": 500, "eval": 71.5, "split": "main"}]


def test_a_curve_closed_mid_window_puts_its_last_point_at_the_last_step_read(tmp_path):
    """A cell whose training fails closes its curve: the partial window is a point at the last step it read."""
    path = tmp_path / "c.jsonl"
    writer = CurveWriter(path, 3 * MAX_POINTS, "abc")  # a point every 3 steps
    writer.steps(1, [1.0, 0.5], [0.1, 0.1], [None, None], [4, 4], 1.0)
    writer.close()
    writer.close()  # the cell closes it again after train() did: nothing more is written
    assert read_curve(path)["train"] == [{"step": 2, "loss": 0.75, "lr": 0.1, "grad_norm": None, "tokens_per_s": 8.0}]


def test_a_torn_last_line_leaves_the_rest_readable(tmp_path):
    path = tmp_path / "c.jsonl"
    writer = CurveWriter(path, 4, "abc")
    writer.steps(1, [1.0, 0.5], [0.1, 0.1], [None, None], [4, 4], 1.0)
    writer.file.write('{"step": 3, "lo')  # killed mid-write
    writer.file.flush()
    assert [p["step"] for p in read_curve(path)["train"]] == [1, 2]
    assert read_curve(tmp_path / "absent.jsonl") is None


@pytest.mark.parametrize("points,expected", [
    ([1.0, 0.5, 0.2, 0.15, 0.1], 4),  # target 0.1 + 0.1 × 0.9 = 0.19: step 4 (0.15) is the first at or below
    ([1.0, 1.2, 1.1], None),  # the loss did not fall: no share of a drop
])
def test_steps_to_the_loss_drop_by_hand(points, expected):
    assert loss_drop_step([{"step": i + 1, "loss": v} for i, v in enumerate(points)]) == expected


def test_steps_to_the_final_score_by_hand():
    evals = [{"step": 10, "eval": 50.0}, {"step": 20, "eval": 72.0}, {"step": 30, "eval": 80.0}]
    assert score_step(evals, higher=True) == 20  # 72 >= 0.9 × 80
    assert score_step([{"step": 10, "eval": 3.0}, {"step": 20, "eval": 2.0}], higher=False) == 20  # 2 <= 2 / 0.9


@pytest.mark.slow
def test_a_grid_writes_curves_the_report_draws_and_export_reads(tmp_path, write_suite):
    from bench.cli import main
    from tests.conftest import TINY_SUITE

    suite, results, out = write_suite(TINY_SUITE), tmp_path / "results", tmp_path / "reports"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    records = [json.loads(p.read_text()) for p in (results / "tiny").glob("*.json")]
    for record in records:
        curve = read_curve(results / "tiny" / "curves" / f"{record['cell']['id']}.jsonl")
        assert [p["step"] for p in curve["train"]] == list(range(1, 21))
        losses = [p["loss"] for p in curve["train"]]
        assert sum(losses[-10:]) / 10 == pytest.approx(record["train"]["final_loss"])  # the record's, from its steps
        assert all(p["tokens_per_s"] > 0 and p["grad_norm"] >= 0 for p in curve["train"])
    assert main(["report", "--suite", str(suite), "--results", str(results), "--out", str(out), "--format", "md"]) == 0
    md = (out / "tiny" / "report.md").read_text()
    assert "## Training curves" in md and "loss-curve-tiny-encoder-synth-polarity.png" in md
    export = tmp_path / "curves.csv"
    assert main(["results", "export", "--suite", str(suite), "--results", str(results), "--curves",
                 "--out", str(export)]) == 0
    lines = export.read_text().splitlines()
    assert lines[0].startswith("id,label,model,task,seed,step,") and len(lines) == 1 + 2 * 20
    merged = tmp_path / "merged"  # a merge brings each record's curve with it
    assert main(["results", "merge", str(results), "--into", str(merged)]) == 0
    for record in records:
        name = f"{record['cell']['id']}.jsonl"
        assert (merged / "tiny" / "curves" / name).read_bytes() == (results / "tiny" / "curves" / name).read_bytes()
