"""A disk cache of what is costly to compute again, in two folders (KINDS): `features`, the tokenised data, so cells
that share a (task, split, tokenizer, length, template) tokenise once; `plan`, the FLOPs of a training step of
one shape, a few-shot task's measured prompt length and a cell's predicted memory, so `run --dry-run` and the GPU
packer compute each once across runs (keyed by the package versions and this harness's source, so a change to either
computes it again; bench/tools/plan_entries.py checks each entry read). Keys hash everything the entry depends on;
entries are JSON (data, never code) named by that hash, written atomically, and a damaged entry is rebuilt: one
that is not JSON, or not what its writer stores (lookup's `valid`). The cache reads and writes nothing through a
symbolic link: a kind's folder that is one (planted in a shared cache, it would point the cache's writes and `clear`
elsewhere) is not used, its entries computed afresh. A cache that cannot be read or written (read-only, full) only
costs time. Location: $PEFT_BENCH_CACHE, else ~/.cache/peft-bench.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.files import atomic_write

VERSION = 1  # bump when the feature format changes


KINDS = ("features", "plan")
_ENTRY = re.compile(r"[0-9a-f]{24}\.json")  # the names cached() gives: nothing else in a folder is ours


def root(kind: str = "features") -> Path:
    assert kind in KINDS, kind
    # an empty PEFT_BENCH_CACHE is unset: as a path it would be the current folder, written into unasked
    return Path(os.environ.get("PEFT_BENCH_CACHE") or "~/.cache/peft-bench").expanduser() / kind


def usable(kind: str) -> bool:
    """Whether the kind's folder may be read and written: not a symbolic link (it may not exist yet)."""
    return not root(kind).is_symlink()


def entries(kind: str) -> list[Path]:
    """The files cached() wrote in the kind's folder (a regular file named as it names them, not a link)."""
    folder = root(kind)
    if not usable(kind) or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _ENTRY.fullmatch(p.name) and p.is_file() and not p.is_symlink())


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """A digest of this harness's source (every .py, .json and .yaml file of the bench package): what a
    computed entry depends on besides its key."""
    package = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".json", ".yaml") and p.is_file()):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides a tokenizer's output: its full serialisation (fast tokenizers) or name and size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _path(key: dict, kind: str) -> Path:
    digest = hashlib.sha256(json.dumps({"version": VERSION, **key}, sort_keys=True, default=str).encode())
    return root(kind) / f"{digest.hexdigest()[:24]}.json"


def lookup(key: dict, kind: str = "features", valid: Callable[[Any], bool] | None = None) -> tuple[bool, Any]:
    """(found, value) of the key's entry; a damaged entry (not JSON, or not `valid`) is removed where it can be,
    and not found."""
    path = _path(key, kind)
    if not usable(kind) or not path.is_file() or path.is_symlink():
        return False, None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON (or not text), nested past Python's limit
        value, damaged = None, True
    else:
        damaged = valid is not None and not valid(value)
    if not damaged:
        return True, value
    try:  # rebuilt by the caller, and stored over it
        path.unlink(missing_ok=True)
    except OSError:  # a read-only cache: the entry stays, and is computed again each time
        pass
    return False, None


def store(key: dict, value: Any, kind: str = "features") -> None:
    if not usable(kind):
        return
    try:
        atomic_write(_path(key, kind), json.dumps(value, separators=(",", ":")).encode())
    except OSError:  # a cache that cannot be written only costs time
        pass


def cached(key: dict, build: Callable[[], Any], kind: str = "features") -> Any:
    """`build()`'s (JSON-able) result, from disk when the same key was built before."""
    found, value = lookup(key, kind)
    if not found:
        value = build()
        store(key, value, kind)
    return value


def clear() -> tuple[int, int]:
    """Remove every cache entry this harness wrote (entries(): files named as cached() names them, nothing
    else in its folders); returns (files removed, bytes freed)."""
    removed = freed = 0
    for kind in KINDS:
        for path in entries(kind):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed, freed = removed + 1, freed + size
    return removed, freed
