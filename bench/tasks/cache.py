"""A disk cache of tokenised data, so cells that share a (task, split, tokenizer, length, template)
tokenise once. Keys hash everything the features depend on; entries are JSON (data, never code),
written atomically, and a damaged entry is rebuilt. Location: $PEFT_BENCH_CACHE, else
~/.cache/peft-bench.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run.store import atomic_write

VERSION = 1  # bump when the feature format changes


def root() -> Path:
    return Path(os.environ.get("PEFT_BENCH_CACHE", "~/.cache/peft-bench")).expanduser() / "features"


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides a tokenizer's output: its full serialisation (fast tokenizers) or name and size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(key: dict, build: Callable[[], Any]) -> Any:
    """`build()`'s (JSON-able) result, from disk when the same key was built before."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, **key}, sort_keys=True, default=str).encode())
    path = root() / f"{digest.hexdigest()[:24]}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # damaged: rebuild it
            path.unlink(missing_ok=True)
    value = build()
    atomic_write(path, json.dumps(value, separators=(",", ":")).encode())
    return value


def clear() -> tuple[int, int]:
    """Remove every cache entry this harness wrote (the `*.json` files in root(), nothing else);
    returns (files removed, bytes freed)."""
    removed = freed = 0
    for path in root().glob("*.json") if root().is_dir() else []:
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        removed, freed = removed + 1, freed + size
    return removed, freed
