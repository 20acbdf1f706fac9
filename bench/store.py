"""The results store: `results/<suite>/<cell id>.json`, one record per cell.

Writes are atomic (temp file, fsync, rename), so a reader never sees half a record and a crash never
leaves one. A record that is replaced (--force, --retry-failed) is first copied to
`results/<suite>/history/`, so nothing recorded is ever lost. A cell being run holds
`<id>.lock`, so runners sharing one store never run the same cell twice at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from bench.record import problems

HISTORY = "history"


class Store:
    def __init__(self, root: str | Path = "results"):
        self.root = Path(root)

    def suite_dir(self, suite: str) -> Path:
        return self.root / suite

    def path(self, suite: str, cell_id: str) -> Path:
        return self.suite_dir(suite) / f"{cell_id}.json"

    def read(self, suite: str, cell_id: str) -> dict | None:
        """The record of a cell, or None when there is none or it cannot be used."""
        try:
            record = json.loads(self.path(suite, cell_id).read_text())
        except (OSError, ValueError):
            return None
        return None if problems(record) else record

    def write(self, record: dict) -> Path:
        suite, cell_id = record["cell"]["suite"], record["cell"]["id"]
        target = self.path(suite, cell_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            old = target.read_bytes()
            stamp = _stamp(old)
            atomic_write(target.parent / HISTORY / f"{cell_id}.{stamp}.json", old)
        atomic_write(target, (json.dumps(record, indent=1, sort_keys=False) + "\n").encode())
        return target

    def records(self, suite: str | None = None) -> tuple[list[dict], list[str]]:
        """Every usable record (of one suite, or all), and a line per unusable file."""
        folders = [self.suite_dir(suite)] if suite else sorted(p for p in self.root.glob("*") if p.is_dir())
        found, bad = [], []
        for folder in folders:
            for path in sorted(folder.glob("*.json")):
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError) as e:
                    bad.append(f"{path}: unreadable ({e})")
                    continue
                issues = problems(record)
                if issues:
                    bad.append(f"{path}: " + "; ".join(issues))
                else:
                    found.append(record)
        return found, bad

    @contextlib.contextmanager
    def claim(self, suite: str, cell_id: str) -> Iterator[bool]:
        """Hold the cell's lock while running it; yields False when another live runner holds it."""
        lock = self.suite_dir(suite) / f"{cell_id}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        if not _try_lock(lock, owner):
            if not _stale(lock):
                yield False
                return
            lock.unlink(missing_ok=True)  # its runner died: take over
            if not _try_lock(lock, owner):
                yield False
                return
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)


def _try_lock(lock: Path, owner: dict) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    return True


def _stale(lock: Path) -> bool:
    """A lock whose process is gone (same host only: another host's pid cannot be checked)."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return True
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def _stamp(old: bytes) -> str:
    try:
        created = json.loads(old).get("created_at") or "unknown"
    except ValueError:
        created = "unreadable"
    return "".join(c for c in created if c.isalnum()) or "unknown"


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; records are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    row["status"] = record["status"]
    error = record.get("error") or {}
    row["error"] = f"{error.get('type')}: {error.get('message')}" if error else None
    for section in ("params", "memory", "time", "flops", "train"):
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


def load_frame(results: str | Path, suite: str | None = None):
    """(DataFrame with one row per usable record, list of problems with the other files)."""
    import pandas as pd

    records, bad = Store(results).records(suite)
    return pd.DataFrame([flatten(r) for r in records]), bad
