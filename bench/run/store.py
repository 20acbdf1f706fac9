"""The results store: `results/<suite>/<cell id>.json`, one record per cell.

Writes are atomic (temp file, fsync, rename), so a reader never sees half a record and a crash never
leaves one. A record that is replaced (--force, --retry-failed) is first copied to
`results/<suite>/history/`, so nothing recorded is ever lost. A cell being run holds
`<id>.lock` (owner and heartbeat: see `Store.acquire`), so runners sharing one store never run the
same cell twice at once; a runner re-reads a cell's record after claiming it, so none runs a cell
another runner finished meanwhile. `results/<suite>/.index` caches what planning needs of each record
(see `Store.scan`); the records stay the only truth.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from bench.errors import BadInput
from bench.files import atomic_write, checked, safe_name
from bench.fmt import setting_text
from bench.record import NUMBER_SECTIONS, STATUSES, problems
from bench.run import locks
from bench.run.locks import Claim

HISTORY = "history"
CURVES = "curves"  # <suite>/curves/<cell id>.jsonl: each cell's training curve (bench/cell/curves.py)
INDEX = ".index"  # not *.json: no reader takes it for a record


class StoreUnwritable(BadInput):
    """The store could not be written mid-run (disk full, made read-only): the run stops and says so."""


class Store:
    def __init__(self, root: str | Path = "results"):
        self.root = Path(root)

    def suite_dir(self, suite: str) -> Path:
        return self.root / checked(suite, "suite name")

    def path(self, suite: str, cell_id: str) -> Path:
        return self.suite_dir(suite) / f"{checked(cell_id, 'cell id')}.json"

    def read(self, suite: str, cell_id: str) -> dict | None:
        """The record of a cell, or None when there is none or it cannot be used."""
        return _load(self.path(suite, cell_id), checked=False)[0]

    def write(self, record: dict) -> Path:
        suite, cell_id = record["cell"]["suite"], record["cell"]["id"]
        target = self.path(suite, cell_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            self.archive(suite, cell_id, target.read_bytes())
        atomic_write(target, (json.dumps(record, indent=1, sort_keys=False) + "\n").encode())
        return target

    def archive(self, suite: str, cell_id: str, data: bytes) -> Path:
        """Keep a record that is not (or no longer) the cell's current one in the suite's history."""
        path = self.suite_dir(suite) / HISTORY / f"{checked(cell_id, 'cell id')}.{_stamp(data)}.json"
        atomic_write(path, data)
        return path

    def records(self, suite: str | None = None) -> tuple[list[dict], list[str]]:
        """Every usable record (of one suite, or all), and a line per unusable file; a record the suite's
        index vouches for (see `scan`) is not checked again, a file it knows to be unusable not read. Only
        reads: a store read for a report, a comparison or a merge is left as it was."""
        folders = [self.suite_dir(suite)] if suite else sorted(p for p in self.root.glob("*") if p.is_dir())
        found, bad = [], []
        for folder in folders:
            usable, unusable = _read_folder(folder, full=True, update_index=False)
            found += usable.values()
            bad += unusable
        return found, bad

    def scan(self, suite: str) -> tuple[dict[str, dict], list[str]]:
        """What planning needs of each usable record of a suite, by the cell id its file is named for
        (`plan_view`: status and whether its error came from the environment), and a line per unusable
        file: one pass over the folder for a whole grid's planning.

        A file is read and checked only when the suite's index has no entry for it under its current
        stat (inode, size, mtime in ns); the index is then rewritten. So a run over a recorded grid reads
        no record it has read before. A record is only ever replaced by a rename, which gives it a new
        inode, so an unchanged stat is an unchanged file. The index is a cache: missing, unreadable, or
        written by another version of the record check (bench/record.py, bench/figures.py), it is
        rebuilt from the records; two runners rewriting it at once lose at most entries the next scan
        reads again; a store the user cannot write to is scanned without it.
        """
        return _read_folder(self.suite_dir(suite), full=False, update_index=True)

    def stamp(self, suite: str, cell_id: str) -> tuple[int, int] | None:
        """(mtime in ns, size) of a cell's record file, None without one: a cheap way to see that
        another runner wrote the record since it was last looked at."""
        try:
            st = self.path(suite, cell_id).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def lock_path(self, suite: str, cell_id: str) -> Path:
        return self.suite_dir(suite) / f"{checked(cell_id, 'cell id')}.lock"

    def acquire(self, suite: str, cell_id: str) -> Claim | None:
        """Take the cell's lock to run it, or None when another live runner holds it (bench/run/locks.py)."""
        return locks.acquire(self.lock_path(suite, cell_id))

    def steal(self, suite: str, cell_id: str) -> dict | None:
        """Remove a cell's lock whoever holds it (`run --steal-locks`); returns what the lock said of its owner."""
        return locks.steal(self.lock_path(suite, cell_id))


def _stamp(old: bytes) -> str:
    """A history file name part from the replaced record's created_at (whatever the old file holds)."""
    try:
        created = json.loads(old)
    except ValueError:
        created = None
    created = created.get("created_at") if isinstance(created, dict) else None
    stamp = "".join(c for c in created if c.isalnum()) if isinstance(created, str) else ""
    return f"{stamp or 'unknown'}-{time.time_ns()}"  # two replaced records never share a history name


def unusable_note(bad: list[str]) -> str:
    """How many files are not usable records, how many of those are of another schema version, and the first."""
    older = sum("schema_version" in line for line in bad)
    kinds = f" ({older} of another schema version, which this version cannot read)" if older else ""
    return f"{len(bad)} file(s) are not usable records{kinds}; first: {bad[0]}"


def plan_view(record: dict) -> dict:
    """What planning reads of a record (runner.needs_run): its status, and whether its error came from the
    environment."""
    environment = bool((record.get("error") or {}).get("environment"))
    return {"status": record["status"], "error": {"environment": True} if environment else None}


def _read_folder(folder: Path, full: bool, update_index: bool) -> tuple[dict[str, dict], list[str]]:
    """A folder's usable records by file stem (the records when `full`, else their plan_view) and a line per
    unusable file, through the folder's index (see Store.scan): a file the index knows under its current
    stat is not read at all when only its plan_view is needed or it is not usable, and read without being
    checked again when its record is. `update_index`: rewrite the index when it lacks or misstates a file."""
    known = _read_index(folder / INDEX)
    entries, found, bad = {}, {}, []
    for path in sorted(folder.glob("*.json")):
        if path.is_symlink():  # the store writes no links: one is planted, and never read through
            bad.append(f"{path}: a symbolic link (not read)")
            continue
        try:
            st = path.stat()
        except OSError as e:
            bad.append(f"{path}: unreadable ({e})")
            continue
        key = [st.st_ino, st.st_size, st.st_mtime_ns]
        verdict = _indexed(known.get(path.name), key)
        loaded = None
        if verdict is None or (full and isinstance(verdict, dict)):
            loaded, verdict = _load(path, checked=verdict is not None)
        entries[path.name] = key + [verdict]
        if isinstance(verdict, dict):
            found[path.stem] = loaded if full else verdict
        else:
            bad.append(f"{path}: {verdict}")
    if update_index and entries != known:
        with contextlib.suppress(OSError):  # a store this user cannot write to is read without its index
            atomic_write(folder / INDEX, json.dumps({"checker": _checker(), "files": entries}).encode())
    return found, bad


def _indexed(entry, key: list) -> dict | str | None:
    """The index's verdict on a file whose stat is `key`: a plan_view or why it is unusable; None when the
    entry is missing, for another stat, or not of that shape (the index is only a cache)."""
    if not (isinstance(entry, list) and len(entry) == 4 and entry[:3] == key):
        return None
    verdict = entry[3]
    plan = isinstance(verdict, dict) and verdict.get("status") in STATUSES and set(verdict) == {"status", "error"}
    return verdict if plan or isinstance(verdict, str) else None


def _load(path: Path, checked: bool) -> tuple[dict | None, dict | str]:
    """(the record, its plan_view), or (None, why the file is not a usable record); `checked`: the index
    already vouches for the file's shape."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable ({e})"
    except RecursionError:
        return None, "unreadable (JSON nested too deep)"
    issues = [] if checked else problems(loaded)
    return (None, "; ".join(issues)) if issues else (loaded, plan_view(loaded))


@functools.cache
def _checker() -> str:
    """A fingerprint of the record check, so an index written under another version of it is not trusted."""
    from bench import figures, record

    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (record, figures))).hexdigest()[:16]


def _read_index(index: Path) -> dict:
    try:
        loaded = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(loaded, dict) and loaded.get("checker") == _checker() and isinstance(loaded.get("files"), dict)
    return loaded["files"] if ok else {}


def shots_of(record: dict) -> int | None:
    """Training examples of a few-shot cell (`config.train.shots`), None for a full-data cell."""
    train = ((record.get("cell") or {}).get("config") or {}).get("train") or {}
    shots = train.get("shots")
    return int(shots) if isinstance(shots, (int, float)) and not isinstance(shots, bool) else None


def flatten(record: dict) -> dict[str, Any]:
    """One row: cell fields by name, then `section.figure` columns, metrics as `scores.<metric>`."""
    cell = record["cell"]
    row: dict[str, Any] = {k: cell.get(k) for k in ("id", "suite", "label", "method", "method_family",
                                                    "model", "task", "seed")}
    row["label"] = row["label"] or row["method"]
    row["shots"] = shots_of(record)
    row["setting"] = setting_text(cell["sweep"]) if cell.get("sweep") else None  # a sweep's variant, by name
    row["status"] = record["status"]
    error = record.get("error") or {}
    row["error"] = f"{error.get('type')}: {error.get('message')}" if error else None
    for section in NUMBER_SECTIONS:
        for key, value in (record.get(section) or {}).items():
            if not isinstance(value, (dict, list)):
                row[f"{section}.{key}"] = value
    scores = record.get("scores") or {}
    row["main_metric"] = scores.get("main_metric")
    for name, value in (scores.get("metrics") or {}).items():
        row[f"scores.{name}"] = value
    row["score"] = (scores.get("metrics") or {}).get(row["main_metric"])
    row["created_at"] = record.get("created_at")
    row["record"] = record
    return row


def load_curves(results: str | Path, suite: str, ids) -> dict[str, dict]:
    """The training curves of these cells that the store holds, by cell id (bench/cell/curves.read_curve)."""
    from bench.cell.curves import read_curve

    folder = Store(results).suite_dir(suite) / CURVES
    found = {cell_id: read_curve(folder / f"{cell_id}.jsonl") for cell_id in ids if safe_name(str(cell_id))}
    return {cell_id: curve for cell_id, curve in found.items() if curve is not None}


def load_frame(results: str | Path, suite: str | None = None):
    """(DataFrame with one row per usable record, list of problems with the other files)."""
    import pandas as pd

    records, bad = Store(results).records(suite)
    return pd.DataFrame([flatten(r) for r in records]), bad
