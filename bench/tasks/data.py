"""Reading a task's rows: synthetic generators, the hub through `datasets`, or local files.

Local files follow the hub's layout and column schema: `DIR/<dataset>/<config>/<split>.{jsonl,csv,parquet}`
where <dataset> is the last part of the hub id (nyu-mll/glue -> glue), so the same code path serves
`--data-dir ../shared/data` and the hub. A `manual` source (a dataset users must request, StoryCloze)
is read from the same folder under --data-dir, else under $PEFT_BENCH_MANUAL_DATA (default
~/.cache/peft-bench/manual): its files as distributed, renamed to the hub's columns, or the hub layout.
A task's own `files` may also be TSV or plain text tables, any of them gzip'd (reading one file, and checking
its rows: bench/tasks/datafiles.py).

Before any work, `check_cells` reads the first rows of every local file a grid needs and checks the
columns the task names and the label values, so a wrong column or label fails at once, naming the
file, the task definition's file:line and the columns the file has.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

from bench.errors import BadInput
from bench.tasks.datafiles import check_file, read_file, rows_to_check
from bench.tasks.spec import TaskSpec
from bench.tasks.synthetic import GENERATORS, translate

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # the hub layout's (--data-dir)
class DataUnavailable(BadInput):
    """The data a task needs cannot be read here; the message says how to provide it."""


# Cross-lingual tasks (bench/tasks/crosslingual.py): a source's `languages`, one hub config each.
DEFAULT_TRAIN_LANGUAGE = "en"


def languages(task: TaskSpec) -> tuple[str, ...]:
    """The task's languages in its definition's order; () for a task in one language."""
    return tuple(task.source.get("languages", ()))


def train_language(task: TaskSpec) -> str | None:
    return task.source.get("train_language", DEFAULT_TRAIN_LANGUAGE) if languages(task) else None


def target_languages(task: TaskSpec) -> list[str]:
    """Every language of the task but the one it trains on: those zero-shot transfer is scored on."""
    return [lang for lang in languages(task) if lang != train_language(task)]


def language_view(task: TaskSpec, split: str) -> tuple[TaskSpec, str]:
    """(the task in one language, the split in it) for a split key of a cross-lingual task: `eval:<language>`
    is that language's evaluation split, every other key (train, eval, a selection split) the training
    language's. A task in one language is returned as it is."""
    if not languages(task):
        return task, split
    language = train_language(task)
    if split.startswith("eval:") and split[5:] in languages(task):
        language, split = split[5:], "eval"
    source = {k: v for k, v in task.source.items() if k not in ("languages", "train_language")}
    source["language"] = language
    if "dataset" in source:
        source["config"] = language
    return dataclasses.replace(task, source=source), split


def eval_splits(task: TaskSpec) -> dict[str, str]:
    """Evaluation splits by name: "" for the main one, then e.g. "mismatched" (MNLI), each its split key
    for load_rows ("eval", "eval:<name>")."""
    return {"": "eval", **{name: f"eval:{name}" for name in task.source.get("more_eval_splits", {})},
            **{lang: f"eval:{lang}" for lang in target_languages(task)}}


def hub_split(task: TaskSpec, split: str) -> str:
    """The dataset's split name for "train", "eval", "eval:<name>" (a more_eval_splits entry) or "split:<name>"
    (a split named as the dataset names it: a suite's selection split)."""
    task, split = language_view(task, split)
    if split.startswith("split:"):
        return split[6:]
    if split.startswith("eval:"):
        return task.source["more_eval_splits"][split[5:]]
    if split == "demos":  # the solved rows of a k-shot evaluation (task.demonstrations)
        return task.source["demo_split"]
    return task.source.get("train_split" if split == "train" else "eval_split",
                           "train" if split == "train" else "validation")


def file_key(split: str) -> str:
    """A `files:` source's key for a split: train, eval, or the name after "eval:" / "split:"."""
    return split.split(":", 1)[1] if ":" in split else split


def split_location(task: TaskSpec, split: str) -> str:
    """Where a split's rows come from, comparable between splits: its file for a `files:` source, else the
    dataset's split name (a synthetic task's splits are separate draws, so its key)."""
    if "files" in task.source:
        return task.source["files"].get(file_key(split), f"<no {file_key(split)} file>")
    return split if "synthetic" in task.source else hub_split(task, split)


def dataset_folder(task: TaskSpec, root: str | Path) -> Path:
    """ROOT/<dataset>/<config>: where a hub dataset's local copy lives."""
    return Path(root) / task.source["dataset"].split("/")[-1] / (task.source.get("config") or "")


def local_file(task: TaskSpec, split: str, data_dir: str | Path) -> Path | None:
    task, split = language_view(task, split)
    folder = dataset_folder(task, data_dir)
    for suffix in SUFFIXES:
        path = folder / f"{hub_split(task, split)}{suffix}"
        if path.is_file():
            return path
    return None


MANUAL_DATA = "PEFT_BENCH_MANUAL_DATA"


def manual_root(data_dir: str | Path | None) -> Path:
    return Path(data_dir if data_dir is not None else
                os.environ.get(MANUAL_DATA, "~/.cache/peft-bench/manual")).expanduser()


def manual_file(task: TaskSpec, split: str, data_dir: str | Path | None) -> tuple[Path | None, bool]:
    """(the file of a split of a manual source, whether it is the distributed file whose columns need
    renaming); (None, False) when neither it nor a hub-layout file is there."""
    folder = dataset_folder(task, manual_root(data_dir))
    distributed = folder / task.source["manual"]["files"].get(hub_split(task, split), "")
    if distributed.is_file():
        return distributed, True
    return local_file(task, split, manual_root(data_dir)), False


def needed_splits(task: TaskSpec, evaluation_only: bool = False) -> list[str]:
    """The splits a cell reads: training data, and evaluation data unless another task evaluates."""
    train = [] if evaluation_only else ["train"]
    demos = ["demos"] if task.demonstrations else []
    return train if task.eval_task is not None else train + list(eval_splits(task).values()) + demos


def check_available(task: TaskSpec, data_dir: str | Path | None, evaluation_only: bool = False) -> None:
    """Fail before any work when a task's data cannot be read (local files missing, hub offline)."""
    if task.members:  # a stage's mixture: its members' training data; a multi-task cell's: all their data
        for member in task.members:
            if task.source.get("scored"):
                check_available(member, data_dir, evaluation_only)
            else:
                check_split(member, "train", data_dir)
        return
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
    selections = {(c.task.name, c.train.selection_split): c for c in cells if c.train.selection_split}
    for (_, split), cell in sorted(selections.items()):
        check_split(cell.task, f"split:{split}", cell.data_dir)


def check_split(task: TaskSpec, split: str, data_dir: str | Path | None) -> None:
    """Raise DataUnavailable when one split of a task cannot be read."""
    task, split = language_view(task, split)
    src = task.source
    if "manual" in src:
        path, distributed = manual_file(task, split, data_dir)
        if path is None:
            manual = src["manual"]
            raise DataUnavailable(
                f"task '{task.name}': {src['dataset']} is not served by the hub; request it at {manual['url']}, "
                f"then put {', '.join(repr(f) for f in manual['files'].values())} in "
                f"{dataset_folder(task, manual_root(data_dir))} "
                f"({'under --data-dir' if data_dir is not None else f'set {MANUAL_DATA} to keep them elsewhere'}), "
                "or leave the task out with --tasks", task.origin)
        check_file(task, path, src if distributed else {},
                    _read_manual(task, path, distributed, rows_to_check(task)))
    elif "files" in src:
        key = file_key(split)
        path = src["files"].get(key)
        if path is None or not Path(path).is_file():
            raise DataUnavailable(f"task '{task.name}': {key} file not found: {path}", task.origin)
        path = Path(path)
        check_file(task, path, src, read_file(path, src, limit=rows_to_check(task)))
    elif "p3" in src:
        from bench.tasks import p3

        if data_dir is None and hub_offline():
            raise DataUnavailable(f"task '{task.name}' needs {p3.P3} from the hub, and the hub is offline here; pass "
                                  "--data-dir DIR with DIR/P3/<subset>/<split>.jsonl")
        if data_dir is not None and not p3.subsets(src["p3"], data_dir):
            raise DataUnavailable(f"task '{task.name}': no {p3.P3} subset starting with '{src['p3']}_' in "
                                  f"{Path(data_dir) / 'P3'}")
    elif "dataset" in src:
        if data_dir is not None:
            if local_file(task, split, data_dir) is None:
                folder = Path(data_dir) / src["dataset"].split("/")[-1] / (src.get("config") or "")
                raise DataUnavailable(
                    f"task '{task.name}': no {hub_split(task, split)}.{{jsonl,csv,parquet}} in {folder} "
                    f"(layout DIR/<dataset>/<config>/<split>, hub columns of {src['dataset']})")
            path = local_file(task, split, data_dir)
            check_file(task, path, {}, read_file(path, limit=rows_to_check(task)))
        elif hub_offline():
            raise DataUnavailable(
                f"task '{task.name}' needs hub dataset {src['dataset']}"
                f"{' (' + src['config'] + ')' if src.get('config') else ''}, and the hub is offline here; "
                "pass --data-dir DIR with DIR/<dataset>/<config>/<split>.jsonl in the hub's columns")


def hub_offline() -> bool:
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
    task, split = language_view(task, split)
    src = task.source
    if "synthetic" in src:
        n = src.get("n_train" if split == "train" else "n_eval", 1000)
        # each split its own draw: training 0, evaluation 1, a selection split ("split:<name>") 2
        offset = 0 if split == "train" else 2 if split.startswith("split:") else 1
        rows = GENERATORS[src["synthetic"]](n, src.get("seed", 0) + offset)
        return translate(rows, task.text, src["language"]) if "language" in src else rows
    check_split(task, split, data_dir)  # only this split: an evaluation-only task has no training data
    if "p3" in src:
        from bench.tasks import p3

        names = p3.subsets(src["p3"], data_dir)
        if not names:
            raise DataUnavailable(f"task '{task.name}': no {p3.P3} subset starting with '{src['p3']}_' in "
                                  f"{Path(data_dir) / 'P3' if data_dir is not None else p3.P3}")
        return p3.rows(names, hub_split(task, split), data_dir, read_file, src.get("revision"))
    if "manual" in src:
        return _read_manual(task, *manual_file(task, split, data_dir))
    if "files" in src:
        return read_file(Path(src["files"][file_key(split)]), src)
    if data_dir is not None:
        return read_file(local_file(task, split, data_dir))
    import datasets

    ds = datasets.load_dataset(src["dataset"], src.get("config"), revision=src.get("revision"),
                               split=hub_split(task, split))
    return [dict(row) for row in ds]


def files_fingerprint(task, data_dir: str | None) -> dict:
    """Where the rows come from: local files by path, size and modification time."""
    if "files" in task.source:
        paths = [Path(p) for p in task.source["files"].values()]
    elif "manual" in task.source:
        paths = [manual_file(task, s, data_dir)[0] for s in needed_splits(task)]
    elif "dataset" in task.source and data_dir is not None:
        paths = [local_file(task, s, data_dir) for s in needed_splits(task)]
    else:
        return {}  # synthetic (its parameters are in the task) or the hub (revision in the task)
    return {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p is not None}


def resolved_revision(task: TaskSpec, data_dir) -> str | None:
    """The hub commit a task's rows come from: its pinned revision, else the one the hub resolves
    now (recorded with the run, since the shipped definitions do not pin); None for other sources."""
    src = task.source
    if "dataset" not in src or "manual" in src or data_dir is not None:
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(src["dataset"], revision=src.get("revision")).sha
    except Exception:  # offline or unknown: the record says null rather than guessing
        return src.get("revision")


def _read_manual(task: TaskSpec, path: Path, distributed: bool, limit: int | None = None) -> list[dict]:
    rows = read_file(path, task.source if distributed else None, limit)
    rename = task.source["manual"].get("rename", {}) if distributed else {}
    return [{rename.get(k, k): v for k, v in row.items()} for row in rows]


def subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """`n` rows drawn with `seed` (the same draw for every method under that seed), order kept."""
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]
