"""`run --log-to`: one tiny grid (an ok cell with an evaluation curve, a cell that fails) logged to every tracker whose
library is installed, read back with each tracker's own reader and compared with the records and the curves; a
missing library is one BadInput before any cell; a tracker failing mid-grid leaves every record stored.

A tracker's library missing skips its test, except in CI (CI=true) when requirements-lock.txt holds it: there the
environment is the lock, so a missing tracker is a broken install, and fails."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest

from bench.cell.curves import read_curve
from bench.run.trackers import TRACKERS
from bench.run.trackers.base import TrackerSpec, figures
from tests.conftest import ROOT, TINY_SUITE

pytestmark = pytest.mark.slow

SUITE = (TINY_SUITE.replace("name: tiny", "name: tracked\nmethod_modules: [tests.faulty_methods]")
         .replace("  - {name: full, train: {lr: 1.0e-3}}\n", "  - {name: fault-raise}\n")
         .replace("max_steps: 20", "max_steps: 8, eval_every: 4"))


def library(name: str):
    """The tracker's library, or a skip (a failure in CI when the lock holds it)."""
    package = TRACKERS[name].package
    try:
        return __import__(package)
    except ImportError:
        lock = (ROOT / "requirements-lock.txt").read_text()
        locked = any(line.split("==")[0] in (package, f"{package}-skinny") for line in lock.splitlines())
        if locked and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{package} is in requirements-lock.txt but not installed: run make install")
        pytest.skip(f"{package} not installed (extra {TRACKERS[name].extra})")


class Flaky:
    """A tracker that fails on every cell: the grid must not notice."""

    calls = 0

    def log_cell(self, record, curve, origin):
        Flaky.calls += 1
        raise OSError("disk of the tracker is full")

    def logged_keys(self):
        return set()

    def close(self):
        pass


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The suite run once with --log-to every installed tracker and a failing one; (suite folder, records by
    status, curves by cell id, stderr)."""
    import contextlib
    import io

    from bench import methods
    from bench.cli import main

    installed = [n for n, s in TRACKERS.items() if _importable(s.package)]
    TRACKERS["flaky"] = TrackerSpec("flaky", "json", "none", "flaky", lambda folder, suite, quiet: Flaky())
    saved = dict(methods.REGISTRY)
    tmp = tmp_path_factory.mktemp("trackers")
    (tmp / "suite.yaml").write_text(SUITE)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(["run", "--suite", str(tmp / "suite.yaml"), "--results", str(tmp / "results"), "--quiet",
                         "--log-to", ",".join([*installed, "flaky"])])
    finally:
        del TRACKERS["flaky"]
        methods.REGISTRY.clear()
        methods.REGISTRY.update(saved)
        sys.modules.pop("tests.faulty_methods", None)
    assert code == 0, err.getvalue()
    suite_dir = tmp / "results" / "tracked"
    records = {r["status"]: r for r in (json.loads(p.read_text()) for p in suite_dir.glob("*.json"))}
    curves = {r["cell"]["id"]: read_curve(suite_dir / "curves" / f"{r['cell']['id']}.jsonl") for r in records.values()}
    return suite_dir, records, curves, err.getvalue()


def _importable(package: str) -> bool:
    from bench.run.trackers.base import _importable as importable

    return importable(package)


def expected_series(curve: dict) -> dict[str, list[tuple[int, float]]]:
    """What a tracker must hold of a curve: per metric, its (step, value) points."""
    series: dict[str, list] = {}
    curve = curve or {"train": [], "evals": []}  # a cell that failed before training has none
    for point in curve["train"]:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            series.setdefault(f"curve/{key}", []).append((point["step"], point[key]))
    for point in curve["evals"]:
        series.setdefault(f"curve/eval_{point['split']}", []).append((point["step"], point["eval"]))
    return series


def test_the_grid_is_whole_whatever_a_tracker_does(grid):
    suite_dir, records, curves, err = grid
    assert set(records) == {"ok", "failed"}  # both records stored although `flaky` failed on each of them
    assert Flaky.calls == 2
    assert err.count("--log-to flaky: could not log cell") == 1 and "--log-to flaky: 2 cell(s) not logged" in err
    ok = records["ok"]
    assert len(curves[ok["cell"]["id"]]["train"]) == 8 and [p["step"] for p in curves[ok["cell"]["id"]]["evals"]] \
        == [4]  # eval_every 4 of 8 steps: the final evaluation is the record's score, not a curve point
    assert figures(records["failed"]) == {} and figures(ok)["scores/accuracy"] == ok["scores"]["metrics"]["accuracy"]


def test_tensorboard_event_files_read_back(grid):
    library("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    suite_dir, records, curves, _ = grid
    for status, record in records.items():
        events = EventAccumulator(str(suite_dir / "tensorboard" / record["cell"]["id"]))
        events.Reload()
        for name, points in expected_series(curves[record["cell"]["id"]]).items():
            got = [(e.step, e.value) for e in events.Scalars(name)]
            assert [s for s, _ in got] == [s for s, _ in points]
            assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6)  # simple_value: float32
        text = events.Tensors("status")[0].tensor_proto.string_val[0].decode()
        assert text.startswith(status)
        scalar_tags = set(events.Tags()["scalars"])
        if status == "ok":
            for name, value in figures(record).items():
                assert events.Scalars(name)[-1].value == pytest.approx(value, rel=1e-6)
                assert events.Scalars(name)[-1].step == 8
        else:
            assert not any(tag.startswith(("scores/", "params/", "time/")) for tag in scalar_tags)


def test_mlflow_file_store_reads_back(grid):
    library("mlflow")
    from mlflow.tracking import MlflowClient

    suite_dir, records, curves, _ = grid
    client = MlflowClient(tracking_uri=(suite_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {r["cell"]["id"] for r in records.values()}
    for status, record in records.items():
        run = runs[record["cell"]["id"]]
        assert run.data.tags["status"] == status and run.info.status == ("FINISHED" if status == "ok" else "FAILED")
        assert run.data.params["train.lr"] == str(record["cell"]["config"]["train"]["lr"])
        assert run.data.params["method.name"] == record["cell"]["method"]
        for name, points in expected_series(curves[record["cell"]["id"]]).items():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            assert history == points  # float64: exactly the curve's
        assert run.data.metrics == ({**figures(record), **{n: p[-1][1] for n, p in
                                                            expected_series(curves[record["cell"]["id"]]).items()}}
                                    if status == "ok" else {n: p[-1][1] for n, p in
                                                            expected_series(curves[record["cell"]["id"]]).items()})
    assert "error" in runs[records["failed"]["cell"]["id"]].data.tags


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (LevelDB's log format: 32 KiB blocks of chunks, each
    with a 7-byte header, after the file's own 7-byte header), read with wandb's own Record message."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_runs_read_back(grid):
    library("wandb")
    suite_dir, records, curves, _ = grid
    runs = {}
    for path in (suite_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        parsed = list(wandb_records(path))
        run = next(r.run for r in parsed if r.WhichOneof("record_type") == "run")
        history: dict[str, list] = {}
        for r in parsed:
            if r.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
                for key, value in items.items():
                    if key.startswith("curve/"):
                        history.setdefault(key, []).append((items["_step"], value))
        summary = {}
        for r in parsed:
            if r.WhichOneof("record_type") == "summary":
                summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.summary.update})
        config = {i.key: json.loads(i.value_json) for i in run.config.update}
        runs[run.display_name] = (run, config, history, summary)
    assert set(runs) == {r["cell"]["id"] for r in records.values()}
    assert list((suite_dir / "wandb" / ".home" / "cache").rglob("*.log"))  # its service's logs: under results
    for status, record in records.items():
        run, config, history, summary = runs[record["cell"]["id"]]
        assert list(run.tags) == [status, "ran"] and config["status"] == status and config["origin"] == "ran"
        assert config["train.lr"] == record["cell"]["config"]["train"]["lr"]
        assert history == expected_series(curves[record["cell"]["id"]])
        for name, value in figures(record).items():
            assert summary[name] == value
        if status != "ok":
            assert not any(k.startswith("scores/") for k in summary)


def test_trackio_local_store_reads_back(grid):
    library("trackio")
    from trackio import utils
    from trackio.sqlite_storage import SQLiteStorage

    suite_dir, records, curves, _ = grid
    assert Path(utils.TRACKIO_DIR) == suite_dir / "trackio" and (suite_dir / "trackio" / "tracked.db").is_file()
    assert set(SQLiteStorage.get_runs("tracked")) == {r["cell"]["id"] for r in records.values()}
    for status, record in records.items():
        cell_id = record["cell"]["id"]
        assert SQLiteStorage.get_run_config("tracked", cell_id)["status"] == status
        logs = SQLiteStorage.get_logs("tracked", cell_id)
        assert logs[0]["step"] == 0 and logs[0]["cell/ok"] == (status == "ok")
        for name, points in expected_series(curves[cell_id]).items():
            assert [(row["step"], row[name]) for row in logs if name in row] == points
        last = {k: v for row in logs for k, v in row.items()}
        assert {k: last[k] for k in figures(record)} == figures(record)
        if status != "ok":
            assert not any(k.startswith("scores/") for k in last)


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb", "trackio"])
def test_a_missing_library_is_one_error_before_any_cell(name, tmp_path, write_suite, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setitem(sys.modules, TRACKERS[name].package, None)  # what `import` then raises ImportError for
    suite = write_suite(TINY_SUITE)
    assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--quiet", "--log-to", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --log-to:") and f"pip install 'peft-bench[{TRACKERS[name].extra}]'" in err
    assert err.count("\n") == 1 and not list((tmp_path / "r").rglob("*.json"))  # one line, and no cell ran


def test_an_unknown_tracker_names_the_choices(tmp_path, write_suite, capsys):
    from bench.cli import main

    assert main(["run", "--suite", str(write_suite(TINY_SUITE)), "--results", str(tmp_path / "r"), "--quiet",
                 "--log-to", "tensorbord"]) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'tensorbord'" in err and "tensorboard" in err and "trackio" in err


def test_a_tracker_that_cannot_say_what_it_holds_gets_no_earlier_record():
    """Its logged_keys raising, the records this run did not run are not logged to it (it may hold them all: they
    would be logged twice), and the summary says so once; a tracker that can say gets those it lacks."""
    from bench.run.trackers.base import Trackers, record_key

    class Keeper:
        def __init__(self, keys=None):
            self.keys, self.logged = keys, []

        def log_cell(self, record, curve, origin):
            self.logged.append(record["cell"]["id"])

        def logged_keys(self):
            if self.keys is None:
                raise OSError("the tracker's store is locked")
            return self.keys

        def close(self):
            pass

    records = [({"cell": {"id": cell_id}, "created_at": "2026-12-07T09:00:00"}, "recorded") for cell_id in "ab"]
    unreadable, reading = Keeper(), Keeper({record_key(records[0][0])})
    trackers = Trackers([("unreadable", unreadable), ("reading", reading)])
    trackers.log_stored(records)
    assert unreadable.logged == [] and reading.logged == ["b"]
    assert trackers.notes() == [
        "--log-to reading: 1 cell(s) recorded earlier were logged already, not logged again",
        "--log-to unreadable: 2 cell(s) recorded earlier not logged: which cells it holds could not be read "
        "(OSError: the tracker's store is locked), and logging them could log some twice"]
    assert trackers.notes() == []
