"""Cell locks: `<id>.lock` beside a cell's record, held by the runner running the cell.

A lock is created whole (its owner linked into place), renewed by a heartbeat, taken over only when stale
(checked by inode, so two runners never both take one) and released only by its owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

# A runner renews its lock's heartbeat every HEARTBEAT_S; a lock whose heartbeat is older than LEASE_S
# is stale on any host (its runner died, or its machine did). Documented in README (Results).
HEARTBEAT_S = 30.0
LEASE_S = 120.0


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), None if it is gone. A zombie
    (state Z or X: killed, its parent not yet waiting for it) is gone: it holds no file, lock or memory any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid()),
            "since": time.time()}


def _try_lock(lock: Path) -> bool:
    """Create the lock whole or not at all: the owner is written to a file of this process's own, which is then
    linked to the lock's name (link never replaces), so no runner ever sees a lock without its owner."""
    fd, tmp = tempfile.mkstemp(prefix=f".{lock.name}.", suffix=".tmp", dir=lock.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _remove_if_same(lock: Path, inode: int) -> bool:
    """Remove the stale lock found as `inode`, unless another runner replaced it meanwhile (it took over first):
    the lock is moved aside atomically, and put back if it is not the one judged stale."""
    aside = lock.with_name(f".{lock.name}.stale.{os.getpid()}.{time.time_ns()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return True  # someone removed it: try to create ours
    if aside.stat().st_ino == inode:
        aside.unlink()
        return True
    with contextlib.suppress(FileExistsError):  # a third runner's lock took the name: theirs stands
        os.link(aside, lock)
    aside.unlink()
    return False


class Claim:
    """A held cell lock, its heartbeat renewed by a thread of this runner until `release`."""

    def __init__(self, lock: Path):
        self.lock = lock
        self._stop = threading.Event()
        self._heart = threading.Thread(target=self._beat, daemon=True, name="lock-heartbeat")
        self._heart.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.lock)

    def release(self) -> None:
        self._stop.set()
        self._heart.join()
        try:
            owner = json.loads(self.lock.read_text())
        except (OSError, ValueError, RecursionError):
            return
        mine = _owner()
        if isinstance(owner, dict) and all(owner.get(k) == mine[k] for k in ("host", "pid", "started")):
            self.lock.unlink(missing_ok=True)  # only our own: one stolen from us (--steal-locks) is another's now


def lock_problem(lock: Path, now: float | None = None) -> str | None:
    """Why a lock is stale (its holder is gone), or None while its holder may be running.

    Stale: a heartbeat older than LEASE_S (any host), whatever the file holds; on this host, a process that
    is gone or whose start time differs from the lock's (the pid was reused, e.g. PID 1 in a container). A lock
    that cannot be read is stale only by its heartbeat: it may be one another version is still writing.
    """
    try:
        age = (now or time.time()) - lock.stat().st_mtime
        text = lock.read_text()
    except FileNotFoundError:
        return "gone"
    except (OSError, ValueError):  # unreadable, or not text: only its heartbeat can say
        text = ""
    if age > LEASE_S:
        return f"heartbeat {age:.0f} s old (lease {LEASE_S:g} s)"
    try:
        owner = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(owner, dict):
        return None
    if owner.get("host") == socket.gethostname():
        pid = owner.get("pid")
        started = process_start(pid) if isinstance(pid, int) else None
        if started is None:
            return f"process {pid} is gone"
        if owner.get("started") != started:
            return f"pid {pid} now belongs to another process"
    return None


def acquire(lock: Path) -> Claim | None:
    """Take `lock` to run its cell, or None when another live runner holds it.

    The lock names its owner (host, pid, the process's start time) and its file's mtime is a
    heartbeat, renewed every HEARTBEAT_S while held: see `lock_problem` for when it is stale.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    if not _try_lock(lock):
        try:
            seen = lock.stat().st_ino
        except FileNotFoundError:
            seen = None
        if seen is not None and (lock_problem(lock) is None or not _remove_if_same(lock, seen)):
            return None  # held, or another runner took the stale lock over first
        if not _try_lock(lock):
            return None
    return Claim(lock)


def steal(lock: Path) -> dict | None:
    """Remove `lock` whoever holds it; returns what the lock said of its owner."""
    try:
        owner = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        owner = {"unreadable": True}
    lock.unlink(missing_ok=True)
    return owner if isinstance(owner, dict) else {"unreadable": True}
