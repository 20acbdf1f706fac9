"""Provenance: what produced a record (software versions, hardware, this repository's commit)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "datasets", "tokenizers", "accelerate", "numpy")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def repo_state() -> tuple[str | None, bool | None]:
    """(git sha, dirty flag) of this repository; nulls when not run from a checkout."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if sha else None
    return sha, (bool(status) if status is not None else None)


@functools.lru_cache(maxsize=2)
def collect(probe_device: bool = True) -> dict:
    """Everything but the seed (bench.record.new_record puts it in). Unknown values are null.

    probe_device=False leaves CUDA uninitialised (the runner's process must not hold a GPU context);
    the device fields are then null.
    """
    import torch

    sha, dirty = repo_state()
    cuda = probe_device and torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda if cuda else None,
        "device": props.name if props else ("cpu" if probe_device else None),
        "device_memory_bytes": props.total_memory if props else None,
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "git_sha": sha,
        "git_dirty": dirty,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
