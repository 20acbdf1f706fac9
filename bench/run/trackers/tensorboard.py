"""`--log-to tensorboard`: a cell's event files in results/<suite>/tensorboard/<cell id>/ (`tensorboard --logdir
results/<suite>/tensorboard` shows every cell as a run).

Written with tensorboard's own event writer and protos, not torch.utils.tensorboard: the `run` process then never
imports torch for it. Scalars are plain `simple_value` summaries (what EventAccumulator.Scalars reads back): the
curve at its steps, the figures at the cell's last step; the config as the HPARAMS tab's hyperparameters and as a
text summary; the status as text. A rerun of a cell replaces its event files, as its record is replaced. The
event file's name ends in the record's record_key: how the tracker tells which records it holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.run.trackers.base import (
    TrackerSpec,
    config_params,
    curve_steps,
    figures,
    last_step,
    record_key,
    register,
)


class TensorBoardTracker:
    def __init__(self, folder: Path):
        self.folder = folder

    def log_cell(self, record: dict, curve: dict | None, origin: str) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        cell_dir = self.folder / record["cell"]["id"]
        for old in cell_dir.glob("events.out.tfevents.*") if cell_dir.is_dir() else []:
            old.unlink()  # the cell's earlier run: two runs in one folder would interleave their curves
        writer = EventFileWriter(str(cell_dir), filename_suffix=f".{record_key(record)}")
        now = time.time()

        def scalars(step: int, values: dict[str, float]) -> None:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
            writer.add_event(Event(wall_time=now, step=step, summary=summary))

        try:
            params = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                      for k, v in config_params(record, origin).items()}
            writer.add_event(Event(wall_time=now, step=0, summary=hparams_pb(params, trial_id=record["cell"]["id"])))
            error = record.get("error") or {}
            status = record["status"] + (f": {error.get('type')}: {error.get('message')}" if error else "")
            writer.add_event(Event(wall_time=now, step=0, summary=text_pb("status", status)))
            writer.add_event(Event(wall_time=now, step=0, summary=text_pb("config", json.dumps(params, indent=1))))
            for step, values in curve_steps(curve):
                scalars(step, values)
            if figures(record):
                scalars(last_step(record, curve), figures(record))
        finally:
            writer.close()

    def logged_keys(self) -> set[str]:
        return {path.name.rsplit(".", 1)[-1] for path in self.folder.glob("*/events.out.tfevents.*")}

    def close(self) -> None:
        pass


register(TrackerSpec(name="tensorboard", package="tensorboard", extra="tensorboard", folder="tensorboard",
                     open=lambda folder, suite, quiet: TensorBoardTracker(folder)))
