"""`--log-to mlflow`: each cell a run of the experiment named for the suite, in the local file store
results/<suite>/mlruns (`mlflow ui --backend-store-uri file:results/<suite>/mlruns`), through mlflow-skinny's
MlflowClient: no server, no database, no network.

A run holds the config as params (`train.lr`, ...; `record_key` among them, how the tracker tells which records it
holds), the cell's fields, status and origin as tags (a failed cell is a FAILED
run with its error, and no figures), the curve as step-indexed metrics and the figures at the cell's last step.
MLflow 3 keeps the file store in maintenance mode behind MLFLOW_ALLOW_FILE_STORE, which this tracker sets: a SQLite
store would need SQLAlchemy and Alembic, the weight mlflow-skinny exists to avoid. Its telemetry is turned off
(MLFLOW_DISABLE_TELEMETRY): it would write under ~/.config and reach the network.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.run.trackers.base import TrackerSpec, config_params, curve_steps, figures, last_step, register

BATCH = 1000  # MLflow's limit of metrics in one log_batch call


class MlflowTracker:
    def __init__(self, folder: Path, suite: str):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=folder.resolve().as_uri())
        found = self.client.get_experiment_by_name(suite)
        self.experiment = found.experiment_id if found else self.client.create_experiment(suite)

    def log_cell(self, record: dict, curve: dict | None, origin: str) -> None:
        from mlflow.entities import Metric, Param

        cell = record["cell"]
        error = record.get("error") or {}
        tags = {"status": record["status"], "cell_id": cell["id"], "label": str(cell.get("label") or cell["method"]),
                "method": cell["method"], "model": cell["model"], "task": cell["task"], "seed": str(cell["seed"]),
                "origin": origin}
        if error:
            tags["error"] = f"{error.get('type')}: {error.get('message')}"[:5000]
        run = self.client.create_run(self.experiment, run_name=cell["id"], tags=tags)
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for step, values in curve_steps(curve)
                   for key, value in values.items()]
        metrics += [Metric(key, value, now, last_step(record, curve)) for key, value in figures(record).items()]
        params = [Param(key, str(value)[:6000]) for key, value in config_params(record, origin).items()]
        try:
            for first in range(0, len(params), 100):  # MLflow takes at most 100 params a call
                self.client.log_batch(run.info.run_id, params=params[first:first + 100])
            for first in range(0, len(metrics), BATCH):
                self.client.log_batch(run.info.run_id, metrics=metrics[first:first + BATCH])
        finally:
            self.client.set_terminated(run.info.run_id, "FINISHED" if record["status"] == "ok" else "FAILED")

    def logged_keys(self) -> set[str]:
        keys, token = set(), None
        while True:  # a page at a time, one pass over the experiment's runs
            page = self.client.search_runs([self.experiment], max_results=1000, page_token=token)
            keys |= {run.data.params["record_key"] for run in page if "record_key" in run.data.params}
            token = page.token
            if not token:
                return keys

    def close(self) -> None:
        pass


register(TrackerSpec(name="mlflow", package="mlflow", extra="mlflow", folder="mlruns",
                     open=lambda folder, suite, quiet: MlflowTracker(folder, suite)))
