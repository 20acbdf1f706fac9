"""Reading a task's rows: synthetic generators, the hub through `datasets`, or local files.

Local files follow the hub's layout and column schema: `DIR/<dataset>/<config>/<split>.{jsonl,csv,parquet}`
where <dataset> is the last part of the hub id (nyu-mll/glue -> glue), so the same code path serves
`--data-dir ../shared/data` and the hub.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from bench.errors import BadInput
from bench.tasks import TaskSpec
from bench.tasks.synthetic import GENERATORS

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DataUnavailable(BadInput):
    """The data a task needs cannot be read here; the message says how to provide it."""


def field_value(row: dict, column: str):
    """A column's value; dotted names reach into nested columns (`translation.ro`)."""
    if column in row:
        return row[column]
    value = row
    for part in column.split("."):
        value = value[part]
    return value


def eval_splits(task: TaskSpec) -> dict[str, str]:
    """Evaluation splits by name: "" for the main one, then e.g. "mismatched" (MNLI)."""
    return {"": "eval", **{name: f"eval:{name}" for name in task.source.get("more_eval_splits", {})}}


def hub_split(task: TaskSpec, split: str) -> str:
    """The dataset's split name for "train", "eval" or "eval:<name>" (a more_eval_splits entry)."""
    if split.startswith("eval:"):
        return task.source["more_eval_splits"][split[5:]]
    return task.source.get("train_split" if split == "train" else "eval_split",
                           "train" if split == "train" else "validation")


def local_file(task: TaskSpec, split: str, data_dir: str | Path) -> Path | None:
    src = task.source
    folder = Path(data_dir) / src["dataset"].split("/")[-1]
    if src.get("config"):
        folder = folder / src["config"]
    for suffix in SUFFIXES:
        path = folder / f"{hub_split(task, split)}{suffix}"
        if path.is_file():
            return path
    return None


def needed_splits(task: TaskSpec, evaluation_only: bool = False) -> list[str]:
    """The splits a cell reads: training data, and evaluation data unless another task evaluates."""
    train = [] if evaluation_only else ["train"]
    return train if task.eval_task is not None else train + list(eval_splits(task).values())


def check_available(task: TaskSpec, data_dir: str | Path | None, evaluation_only: bool = False) -> None:
    """Fail before any work when a task's data cannot be read (local files missing, hub offline)."""
    for split in needed_splits(task, evaluation_only):
        check_split(task, split, data_dir)
    if task.eval_task is not None:
        check_available(task.eval_task, data_dir, evaluation_only=True)


def check_cells(cells) -> None:
    """check_available for every task a grid's cells read, once each: data problems surface before
    any training."""
    first: dict = {}
    for cell in cells:
        first.setdefault(cell.task.name, cell)
    for name in sorted(first):
        check_available(first[name].task, first[name].data_dir)


def check_split(task: TaskSpec, split: str, data_dir: str | Path | None) -> None:
    """Raise DataUnavailable when one split of a task cannot be read."""
    src = task.source
    if "files" in src:
        key = split.replace("eval:", "")
        path = src["files"].get(key)
        if path is None or not Path(path).is_file():
            raise DataUnavailable(f"task '{task.name}': {key} file not found: {path}", task.origin)
    elif "dataset" in src:
        if data_dir is not None:
            if local_file(task, split, data_dir) is None:
                folder = Path(data_dir) / src["dataset"].split("/")[-1] / (src.get("config") or "")
                raise DataUnavailable(
                    f"task '{task.name}': no {hub_split(task, split)}.{{jsonl,csv,parquet}} in {folder} "
                    f"(layout DIR/<dataset>/<config>/<split>, hub columns of {src['dataset']})")
        elif _hub_offline():
            raise DataUnavailable(
                f"task '{task.name}' needs hub dataset {src['dataset']}"
                f"{' (' + src['config'] + ')' if src.get('config') else ''}, and the hub is offline here; "
                "pass --data-dir DIR with DIR/<dataset>/<config>/<split>.jsonl in the hub's columns")


def _hub_offline() -> bool:
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    import socket

    try:  # a quick name lookup: failing fast beats `datasets` retrying for minutes
        socket.getaddrinfo("huggingface.co", 443)
        return False
    except OSError:
        return True


def load_rows(task: TaskSpec, split: str, data_dir: str | Path | None = None) -> list[dict]:
    """All rows of a split ("train", "eval" or "eval:<name>"), in the hub's column schema."""
    src = task.source
    if "synthetic" in src:
        n = src.get("n_train" if split == "train" else "n_eval", 1000)
        return GENERATORS[src["synthetic"]](n, src.get("seed", 0) + (0 if split == "train" else 1))
    check_split(task, split, data_dir)  # only this split: an evaluation-only task has no training data
    if "files" in src:
        return read_file(Path(src["files"][split.replace("eval:", "")]))
    if data_dir is not None:
        return read_file(local_file(task, split, data_dir))
    import datasets

    ds = datasets.load_dataset(src["dataset"], src.get("config"), revision=src.get("revision"),
                               split=hub_split(task, split))
    return [dict(row) for row in ds]


def resolved_revision(task: TaskSpec, data_dir) -> str | None:
    """The hub commit a task's rows come from: its pinned revision, else the one the hub resolves
    now (recorded with the run, since the shipped definitions do not pin); None for other sources."""
    src = task.source
    if "dataset" not in src or data_dir is not None:
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(src["dataset"], revision=src.get("revision")).sha
    except Exception:  # offline or unknown: the record says null rather than guessing
        return src.get("revision")


def read_file(path: Path) -> list[dict]:
    if path.suffix in (".jsonl", ".json"):
        rows = []
        with path.open() as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError as e:  # name the user's file and line, not the parser's column in it
                    raise BadInput(f"not a JSON object per line: {e.msg} at column {e.colno}",
                                   f"{path}:{number}") from None
        return rows
    import pandas as pd

    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return frame.to_dict("records")


def subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """`n` rows drawn with `seed` (the same draw for every method under that seed), order kept."""
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]
