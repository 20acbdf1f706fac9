"""`--log-to trackio`: each cell a run of the trackio project named for the suite, in trackio's local SQLite store
results/<suite>/trackio/<suite>.db (`TRACKIO_DIR=results/<suite>/trackio trackio show --project <suite>`). Local
mode: no Space, no server (TRACKIO_SPACE_ID and TRACKIO_SERVER_URL are ignored), no CPU/GPU sampling threads.

trackio has no tags nor summary: the status, origin and record_key (how the tracker tells which records it holds)
are in the run's config (and `cell/ok`, 1 or 0, at step 0), the curve
is logged at its steps and the figures at the cell's last step. trackio reads TRACKIO_DIR once, when imported, into
module globals; a process that imported it before (another results folder) has those globals pointed at this
folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from bench.run.trackers.base import TrackerSpec, config_params, curve_steps, figures, last_step, register


class TrackioTracker:
    def __init__(self, folder: Path, suite: str):
        os.environ["TRACKIO_DIR"] = str(folder)
        for remote in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
            os.environ.pop(remote, None)  # local mode whatever the shell says: nothing leaves the results folder
        with contextlib.redirect_stdout(io.StringIO()):
            import trackio
        _point_at(folder)
        self.trackio = trackio
        self.suite = suite

    def log_cell(self, record: dict, curve: dict | None, origin: str) -> None:
        trackio = self.trackio
        with contextlib.redirect_stdout(io.StringIO()):  # trackio prints a banner per run: the grid's output wins
            run = trackio.init(project=self.suite, name=record["cell"]["id"], config=config_params(record, origin),
                               auto_log_cpu=False, auto_log_gpu=False, embed=False)
            try:  # trackio keeps a run only once it has a log: cell/ok makes one of a cell that never trained
                run.log({"cell/ok": float(record["status"] == "ok")}, step=0)
                for step, values in curve_steps(curve):
                    run.log(values, step=step)
                if figures(record):
                    run.log(figures(record), step=last_step(record, curve))
            finally:
                trackio.finish()

    def logged_keys(self) -> set[str]:
        from trackio.sqlite_storage import SQLiteStorage

        return {c["record_key"] for c in SQLiteStorage.get_all_run_configs(self.suite).values() if "record_key" in c}

    def close(self) -> None:
        pass


def _point_at(folder: Path) -> None:
    """Point trackio's module-level paths (TRACKIO_DIR and those under it) at `folder`."""
    from trackio import utils

    old = Path(utils.TRACKIO_DIR)
    if old == folder:
        return
    for name, module in list(sys.modules.items()):
        if name == "trackio" or name.startswith("trackio."):
            for attr, value in list(vars(module).items()):
                if isinstance(value, Path) and (value == old or old in value.parents):
                    setattr(module, attr, folder / value.relative_to(old))


register(TrackerSpec(name="trackio", package="trackio", extra="trackio", folder="trackio",
                     open=lambda folder, suite, quiet: TrackioTracker(folder, suite)))
