"""`run --log-to` on a grid already run: the cells this run does not run (recorded earlier, or adopted from a dead
runner's spool) are logged too, with their origin, and a tracker that holds a record already does not get it twice
(bench/run/trackers/base.py: ORIGINS, record_key). Read back with TensorBoard's and MLflow's own readers; W&B's and
trackio's by what each keeps of a run, where installed."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from bench.run.runner import INCOMING
from bench.run.trackers import TRACKERS
from bench.run.trackers.base import _importable, record_key
from tests.conftest import TINY_SUITE

pytestmark = pytest.mark.slow


def run(suite: Path, results: Path, *log_to: str) -> str:
    from bench.cli import main

    err = io.StringIO()  # the summary and its notes (stdout), the trackers' lines (stderr)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        code = main(["run", "--suite", str(suite), "--results", str(results), "--quiet",
                     *(["--log-to", ",".join(log_to)] if log_to else [])])
    assert code == 0, err.getvalue()
    return err.getvalue()


def held(suite_dir: Path, name: str) -> dict[str, list[str]]:
    """Record key -> the origins of the runs a tracker holds of it (one each, if nothing was logged twice)."""
    found: dict[str, list[str]] = {}
    if name == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for path in (suite_dir / "tensorboard").glob("*/events.out.tfevents.*"):
            events = EventAccumulator(str(path))
            events.Reload()
            config = json.loads(events.Tensors("config")[0].tensor_proto.string_val[0].decode())
            assert path.name.endswith("." + config["record_key"])
            found.setdefault(config["record_key"], []).append(config["origin"])
    elif name == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=(suite_dir / "mlruns").resolve().as_uri())
        experiment = client.get_experiment_by_name("tiny")
        for r in client.search_runs([experiment.experiment_id]):
            assert r.data.tags["origin"] == r.data.params["origin"]
            found.setdefault(r.data.params["record_key"], []).append(r.data.tags["origin"])
    elif name == "wandb":
        for path in (suite_dir / "wandb").glob("offline-run-*"):
            found.setdefault(path.name.rsplit("-", 1)[-1], []).append("?")  # the origin is inside the .wandb file
    else:
        from trackio.sqlite_storage import SQLiteStorage

        for config in SQLiteStorage.get_all_run_configs("tiny").values():
            found.setdefault(config["record_key"], []).append(config["origin"])
    return found


def test_a_resumed_grid_logs_every_cell_once(tmp_path):
    installed = [n for n, s in TRACKERS.items() if _importable(s.package)]
    if not {"tensorboard", "mlflow"} <= set(installed):
        pytest.skip("needs tensorboard and mlflow (the dev extra)")
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE.replace("max_steps: 20", "max_steps: 4"))
    results = tmp_path / "results"
    run(suite, results)  # no tracker yet
    suite_dir = results / "tiny"
    records = {r["cell"]["method"]: r for r in (json.loads(p.read_text()) for p in suite_dir.glob("*.json"))}
    assert set(records) == {"full", "lora"}
    # lora's record as a runner that died after its cell finished leaves it: in the spool, not in the store
    lora = records["lora"]
    (suite_dir / INCOMING).mkdir(exist_ok=True)
    (suite_dir / f"{lora['cell']['id']}.json").rename(suite_dir / INCOMING / f"{lora['cell']['id']}.json")

    err = run(suite, results, *installed)  # runs no cell: full is recorded, lora adopted
    assert "2 already recorded, 1 adopted" in err
    expected = {record_key(records["full"]): ["recorded"], record_key(lora): ["adopted"]}
    for name in installed:
        origins = held(suite_dir, name)
        assert (origins == expected) if name != "wandb" else (set(origins) == set(expected)), name

    err = run(suite, results, *installed)  # again: every tracker holds both records already
    for name in installed:
        assert f"--log-to {name}: 2 cell(s) recorded earlier were logged already, not logged again" in err
        origins = held(suite_dir, name)
        assert (origins == expected) if name != "wandb" else (set(origins) == set(expected)), name
