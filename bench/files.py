"""Files the harness writes for people and other processes: one safe name per path component, writes that are
whole or absent, and flags that name a place this process can write. Every floor may import this module."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from bench.errors import BadInput

# Suite names and cell ids become file and folder names under the store and the reports folder: one
# path component, no separator, no leading dot (so no `..` and no hidden file), printable ASCII only.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def safe_name(name) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def checked(name, what: str) -> str:
    """`name` if it is safe as one file or folder name; else BadInput (a record or suite naming a path)."""
    if not safe_name(name):
        raise BadInput(f"{what} {name!r} is not a safe file name (letters, digits, '.', '_', '-'; "
                       "starting with a letter or digit)", what)
    return name


def writable_folder(path: str | Path, flag: str) -> Path:
    """`path` if this process can create or write the folder there; else BadInput naming the flag and the path
    (a file in the way, a read-only place), before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{path} is a file, not a folder", flag)
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise BadInput(f"{existing} is a file, so {path} cannot be a folder", flag)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write under {existing} (read-only or not yours)", flag)
    return path


def writable_file(path: str | Path, flag: str) -> Path:
    """`path` if this process can write the file there (its folder created if need be); else BadInput."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path} is a folder: give a file name", flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInput(f"cannot write {path} (read-only or not yours)", flag)
    writable_folder(path.parent, flag)
    return path


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
