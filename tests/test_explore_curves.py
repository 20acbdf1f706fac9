"""The explore page's embedded curves (bench/report/explore_curves.py): compacted by hand-computed runs, listed
under their explore rows, and bounded in size for a 700-cell grid."""

import pandas as pd
import pytest

from bench.report.explore_curves import MAX_POINTS, MIN_POINTS, POINT_BUDGET, compact, curve_blob, points_per_cell
from bench.report.interactive import script_json


def stored(n: int, every: int = 2) -> list[dict]:
    """n stored points: step every·(i+1), loss i, lr (10 − i)/10, no gradient norm for the first three."""
    return [{"step": every * (i + 1), "loss": float(i), "lr": (10 - i) / 10,
             "grad_norm": None if i < 3 else float(i), "tokens_per_s": 1000 + 123.456 * i} for i in range(n)]


def test_compact_cuts_runs_and_means_them():
    # 10 points in 4 runs: indices 0-2, 3-5, 6-7, 8-9 (lengths differ by at most one, longer first)
    curve = {"train": stored(10), "evals": [{"step": 4, "eval": 50.123456, "split": "selection"},
                                             {"step": 20, "eval": 70.0, "split": "selection"}]}
    out = compact(curve, 4)
    assert out["stored"] == 10
    assert out["step"] == [6, 12, 16, 20]
    assert out["loss"] == [1.0, 4.0, 6.5, 8.5]  # (0+1+2)/3, (3+4+5)/3, (6+7)/2, (8+9)/2
    assert out["lr"] == [0.8, 0.5, 0.3, 0.1]  # each run's last rate
    assert out["grad_norm"] == [None, 4.0, 6.5, 8.5]  # a run with no known norm is null, never 0
    assert out["tokens_per_s"] == [1123.0, 1494.0, 1802.0, 2049.0]  # 1000 + 123.456·{1, 4, 6.5, 8.5}, 4 digits
    assert (out["eval_step"], out["eval"], out["split"]) == ([4, 20], [50.12, 70.0], "selection")


def test_compact_keeps_short_curves_whole_and_nulls_non_finite():
    train = stored(3)
    train[1]["loss"] = float("nan")
    out = compact({"train": train, "evals": []}, 50)
    assert out["step"] == [2, 4, 6] and out["loss"] == [0.0, None, 2.0]
    assert (out["eval_step"], out["eval"], out["split"]) == ([], [], None)
    assert compact({"train": [], "evals": []}, 50)["step"] == []


def test_points_per_cell_is_bounded():
    assert points_per_cell(1) == MAX_POINTS and points_per_cell(10_000) == MIN_POINTS
    assert points_per_cell(700) == POINT_BUDGET // 700
    assert all(n * points_per_cell(n) <= POINT_BUDGET for n in range(1, POINT_BUDGET // MIN_POINTS + 1))


def grid(cells: int, seeds: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """`cells` (model, task, label) rows, `seeds` records each, every record with a full 500-point curve."""
    records = [{"id": f"c{i}-{s}", "model": "m", "task": f"t{i}", "label": "lora", "shots": None, "seed": s,
                "status": "ok" if s == 1 else "failed"} for i in range(cells) for s in range(1, seeds + 1)]
    frame = pd.DataFrame(records)
    rows = frame[frame["seed"] == 1][["model", "task", "label", "shots"]].reset_index(drop=True)
    curves = {r["id"]: {"train": stored(500), "evals": [{"step": 10 * k, "eval": 60.0 + k, "split": "main"}
                                                        for k in range(1, 11)]} for r in records}
    return frame, rows, curves


def test_curve_blob_lists_each_rows_cells_with_their_status():
    frame, rows, curves = grid(3, seeds=2)
    del curves["c1-2"]  # a cell without a curve file is not listed
    cells, by_row = curve_blob(frame, rows, curves)
    assert [[cells[k]["id"] for k in ks] for ks in by_row] == [["c0-1", "c0-2"], ["c1-1"], ["c2-1", "c2-2"]]
    assert [(c["seed"], c["status"], c["row"]) for c in cells[:2]] == [(1, "ok", 0), (2, "failed", 0)]
    assert curve_blob(frame, rows, {}) == ([], [[], [], []])


def test_a_700_cell_grid_embeds_a_bounded_blob():
    frame, rows, curves = grid(700)
    cells, _ = curve_blob(frame, rows, curves)
    assert sum(len(c["curve"]["step"]) for c in cells) <= POINT_BUDGET
    assert all(c["curve"]["step"][-1] == 1000 and c["curve"]["eval_step"] == list(range(10, 101, 10))
               for c in cells)  # the last step kept; all ten evaluations kept
    size = len(script_json(cells))
    assert size < 1_500_000, size  # its 350,000 stored points as JSON: about 32 MB
    assert cells[0]["curve"]["loss"][0] == pytest.approx(8.5)  # 500 points in 28 runs: the first holds 0..17
