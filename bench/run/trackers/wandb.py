"""`--log-to wandb`: each cell an offline W&B run in results/<suite>/wandb/offline-run-*/ (project: the suite, name:
the cell id, id: its record_key, so the folder's name tells which records it holds; `wandb sync` uploads them
later, if ever). Nothing reaches the network.

A run holds the config (flattened, as the other trackers do) with the status as its tag, the curve as history at
its steps, and the figures in the run's summary (W&B's place for a run's final values); a cell that is not ok has
no figures. wandb's own folders (its service's logs, cache, config, artifacts) are pointed under the same folder, and
its console capture, system metrics, code and git capture are off: the grid's output stays the grid's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.run.trackers.base import TrackerSpec, config_params, curve_steps, figures, record_key, register


class WandbTracker:
    def __init__(self, folder: Path, suite: str):
        home = folder / ".home"
        for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data"),
                         ("WANDB_ARTIFACT_DIR", "artifacts")):
            os.environ[var] = str(home / sub)  # read by wandb and its service process when they start
        os.environ["WANDB_MODE"] = "offline"
        os.environ["WANDB_ERROR_REPORTING"] = "false"
        import wandb

        self.wandb = wandb
        self.folder = folder
        self.suite = suite
        self.settings = wandb.Settings(mode="offline", console="off", silent=True, x_disable_stats=True,
                                       save_code=False, disable_git=True, disable_job_creation=True)

    def log_cell(self, record: dict, curve: dict | None, origin: str) -> None:
        hook = sys.excepthook  # wandb.init installs its own and leaves it: the runner's process keeps its own
        run = self.wandb.init(project=self.suite, name=record["cell"]["id"], id=record_key(record),
                              dir=str(self.folder.parent), config=config_params(record, origin),
                              tags=[record["status"], origin], settings=self.settings)
        try:
            for step, values in curve_steps(curve):
                run.log(values, step=step)
            run.summary.update(figures(record))
        finally:
            run.finish(exit_code=0 if record["status"] == "ok" else 1)
            sys.excepthook = hook

    def logged_keys(self) -> set[str]:
        return {path.name.rsplit("-", 1)[-1] for path in self.folder.glob("offline-run-*")}

    def close(self) -> None:
        try:  # stops wandb's service process now; at interpreter exit wandb's own hook may have done it first
            self.wandb.teardown()
        except AssertionError:  # "Already torn down."
            pass


register(TrackerSpec(name="wandb", package="wandb", extra="wandb", folder="wandb",
                     open=lambda folder, suite, quiet: WandbTracker(folder, suite)))
