"""Stores from several machines: merge them into one, and export a suite's records as a flat table.

`merge` copies every usable record of the source stores into the target store. A cell recorded in
both with the same content is kept once. A cell recorded differently (two machines ran it, or one
reran it) is a conflict: the current record becomes the better one (an `ok` record over any other
status, then the newer `created_at`) and the other goes to the suite's history, so nothing recorded
is lost; each conflict is reported. Source histories are copied too. Sources are only read.

`export` writes one row per usable record with the columns the report reads (bench.run.store.flatten:
cell fields, every figure as `section.name`, metrics as `scores.<metric>`), the cell's resolved
configuration as JSON, where it ran (`env.*`), and what a paper published for the same model, method, task and
main metric (`published.value`, `published.spread`, `published.statistic` such as "median of 5",
`published.source`: bench/references/; the first such row whose stated parameters match the cell's, else the
first; null without one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bench import references
from bench.errors import BadInput
from bench.files import atomic_write, safe_name
from bench.run.store import CURVES, HISTORY, Store, flatten

FORMATS = ("parquet", "csv", "jsonl")
ENV_COLUMNS = ("device", "device_index", "threads", "cells_beside", "device_budget_bytes", "hostname", "git_sha",
               "torch", "transformers", "peft")


@dataclass
class MergeSummary:
    added: int = 0
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)
    history: int = 0  # history files copied
    unusable: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # usable records or history files not merged, and why

    def line(self, into: str) -> str:
        return (f"merged into {into}: {self.added} records added, {self.duplicates} identical ones kept once, "
                f"{len(self.conflicts)} conflicts (the other record kept in history), {self.history} history "
                f"files copied, {len(self.unusable)} unusable files skipped, {len(self.refused)} refused")


def _preferred(record: dict) -> tuple:
    return record["status"] == "ok", str(record.get("created_at") or "")


def merge(sources: list[str], into: str) -> MergeSummary:
    """Check every source first (each record filed under its own suite's folder, with safe names; history files
    plain files), then write: a refused file is named, never half-merged. Merging the same stores again adds
    nothing: a conflict whose other record history already holds is not archived twice."""
    target = Store(into)
    for source in sources:
        if not Path(source).is_dir():
            raise BadInput(f"no results store at {source} (not a folder)", source)
        if Path(source).resolve() == target.root.resolve():
            raise BadInput(f"{source} is the store merged into (--into {into})", source)
    summary = MergeSummary()
    records, histories = [], []
    for source in sources:
        store = Store(source)
        for folder in sorted(p for p in store.root.iterdir() if p.is_dir() and safe_name(p.name)):
            if folder.is_symlink():
                summary.refused.append(f"{folder}: a symbolic link (never followed)")
                continue
            usable, bad = store.records(folder.name)
            summary.unusable += bad
            for record in usable:
                why = _refusal(record, folder.name)
                if why:
                    summary.refused.append(f"{folder}/{record['cell']['id']}.json: {why}")
                else:
                    records.append((record, folder / CURVES / f"{record['cell']['id']}.jsonl"))
            histories.append((folder / HISTORY, folder.name))
    for record, curve in records:
        if _merge_record(target, record, summary):  # the record merged in brings its training curve
            _copy_curve(curve, target.suite_dir(record["cell"]["suite"]) / CURVES / curve.name, summary.refused)
    for source_history, suite in histories:
        summary.history += _copy_history(source_history, target.suite_dir(suite) / HISTORY, summary.refused)
    return summary


def _refusal(record: dict, folder: str) -> str | None:
    """Why a usable record may not be merged from a suite's folder, else None."""
    cell = record["cell"]
    if not safe_name(cell["suite"]) or not safe_name(cell["id"]):
        return f"unsafe suite or cell id ({cell['suite']!r}, {cell['id']!r}: not a plain file name)"
    if cell["suite"] != folder:
        return f"names suite {cell['suite']!r} but lies in {folder!r}/ (not filed into another suite)"
    return None


def _merge_record(target: Store, record: dict, summary: MergeSummary) -> bool:
    """Whether `record` is now the target's record of its cell (added, or preferred to the one there)."""
    suite, cell_id = record["cell"]["suite"], record["cell"]["id"]
    current = target.read(suite, cell_id)
    if current is None:
        target.write(record)
        summary.added += 1
        return True
    if current == record:
        summary.duplicates += 1
        return False
    winner, loser = (record, current) if _preferred(record) > _preferred(current) else (current, record)
    if winner is record:
        target.write(record)  # the current one goes to history
    elif not _in_history(target, suite, cell_id, record):
        target.archive(suite, cell_id, (json.dumps(record, indent=1) + "\n").encode())
    else:
        summary.duplicates += 1  # merged before: its history copy is there already
        return False
    summary.conflicts.append(f"conflict {suite}/{cell_id} ({record['cell']['label'] or record['cell']['method']} · "
                             f"{record['cell']['model']} · {record['cell']['task']} · s{record['cell']['seed']}): "
                             f"kept {_describe(winner)}; {_describe(loser)} is in history")
    return winner is record


def _copy_curve(source: Path, target: Path, refused: list[str]) -> None:
    """A merged record's curve file, when its store has one; a symbolic link is never copied (nor followed)."""
    if source.is_symlink():
        refused.append(f"{source}: a symbolic link (never followed)")
    elif source.is_file():
        atomic_write(target, source.read_bytes())


def _in_history(target: Store, suite: str, cell_id: str, record: dict) -> bool:
    for path in (target.suite_dir(suite) / HISTORY).glob(f"{cell_id}.*.json"):
        try:
            if json.loads(path.read_text()) == record:
                return True
        except (OSError, ValueError, RecursionError):
            continue
    return False


def _describe(record: dict) -> str:
    host = (record.get("env") or {}).get("hostname")
    return f"{record['status']} of {record.get('created_at')}" + (f" on {host}" if host else "")


def _copy_history(source: Path, target: Path, refused: list[str]) -> int:
    """Copy the history files the target lacks; a symbolic link is never copied (nor followed), but named."""
    copied = 0
    if source.is_symlink():
        refused.append(f"{source}: a symbolic link (never followed)")
        return 0
    for path in sorted(source.glob("*.json")) if source.is_dir() else []:
        if path.is_symlink() or not path.is_file() or not safe_name(path.name):
            refused.append(f"{path}: not a plain history file (a link or special file: never copied)")
        elif not (target / path.name).exists():
            atomic_write(target / path.name, path.read_bytes())
            copied += 1
    return copied


def table(results: str, suite: str):
    """The suite's records as a DataFrame, one row each (see the module's docstring for the columns)."""
    import pandas as pd

    records, _ = Store(results).records(suite)
    if not records:
        raise BadInput(f"no usable records of suite {suite!r} under {results}", "--suite")
    rows = []
    for record in records:
        row = flatten(record)
        row.pop("record")
        row["config"] = json.dumps(record["cell"]["config"], sort_keys=True)
        env = record.get("env") or {}
        row.update({f"env.{key}": env.get(key) for key in ENV_COLUMNS})
        row.update(published(record))
        rows.append(row)
    return pd.DataFrame(rows)


CURVE_COLUMNS = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "eval", "split"]


def curve_table(results: str, suite: str):
    """Every point of the suite's training curves (bench/cell/curves.py), one row each, with its cell's names."""
    import pandas as pd

    from bench.run.store import load_curves

    records, _ = Store(results).records(suite)
    curves = load_curves(results, suite, [r["cell"]["id"] for r in records])
    if not curves:
        raise BadInput(f"no training curves of suite {suite!r} under {results} (cells write them as they train)",
                       "--suite")
    rows = []
    for record in records:
        cell = record["cell"]
        curve = curves.get(cell["id"])
        for point in (curve["train"] + curve["evals"]) if curve else []:
            rows.append({"id": cell["id"], "label": cell.get("label") or cell["method"], "model": cell["model"],
                         "task": cell["task"], "seed": cell["seed"], **{c: point.get(c) for c in CURVE_COLUMNS}})
    return pd.DataFrame(rows, columns=["id", "label", "model", "task", "seed", *CURVE_COLUMNS])


def published(record: dict) -> dict:
    """The published counterpart of a record's main score (see the module's docstring)."""
    cell, metric = record["cell"], (record.get("scores") or {}).get("main_metric")
    found = [r for r in references.matching(cell["model"], cell["method"], cell["task"]) if r.metric == metric]
    found.sort(key=lambda r: r.params_match((record.get("params") or {}).get("method")) is not True)
    ref = found[0] if found else None
    return {"published.value": ref.value if ref else None, "published.spread": ref.spread if ref else None,
            "published.statistic": ref.statistic_name if ref else None,
            "published.source": ref.source if ref else None}


def export(results: str, suite: str, fmt: str, out: str, curves: bool = False) -> Path:
    """The suite's records (or, with `curves`, their training curves) as one table file."""
    if fmt not in FORMATS:
        raise BadInput(f"unknown format {fmt!r}", "--format", FORMATS)
    from pandas.api.types import is_numeric_dtype

    from bench.fmt import spreadsheet_safe

    frame = curve_table(results, suite) if curves else table(results, suite)
    if fmt == "csv":  # text a spreadsheet would take for a formula is kept text (the other formats are data)
        for column in [c for c in frame.columns if not is_numeric_dtype(frame[c])]:
            frame[column] = frame[column].map(spreadsheet_safe)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path
