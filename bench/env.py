"""Provenance: what produced a record (software versions, hardware, this repository's commit)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path

# liger-kernel: optional (train.kernels: liger), null where not installed
PACKAGES = ("torch", "transformers", "peft", "datasets", "tokenizers", "accelerate", "numpy", "liger-kernel")
# The tested environment (`make lock`): exact versions of every dependency but torch, whose build
# (CPU or CUDA) belongs to the machine and is pinned by the Makefile instead.
LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements-lock.txt"


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _normal(name: str) -> str:
    """PEP 503 normal form of a distribution name (`Typing_Extensions` -> `typing-extensions`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(path: Path | None = None) -> dict[str, str] | None:
    """Distribution -> version the lock pins for this Python and platform; None without a lock file
    (an install from a wheel, or a checkout without one)."""
    from packaging.markers import Marker

    try:
        text = (path or LOCK_FILE).read_text()
    except OSError:
        return None
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, _, marker = line.partition(";")
        name, _, version = requirement.partition("==")
        if not marker.strip() or Marker(marker.strip()).evaluate():
            pins[_normal(name)] = version.strip()
    return pins


def _declared() -> list[str]:
    """Without a lock: the distributions peft-bench itself requires (extras included)."""
    try:
        requires = importlib.metadata.requires("peft-bench") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    return [_normal(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires]


@functools.lru_cache(maxsize=1)
def lock_state() -> dict:
    """The installed versions against the lock.

    status: `locked` (every pinned distribution installed at its pinned version), `unlocked` (some
    differ: `differs` names them, locked and installed version; null installed = missing), or
    `unknown` (no lock file). `packages`: the installed version of every locked distribution and
    torch (without a lock: of every declared dependency), and `sha256` a hash of that map, so two
    records made in the same environment carry the same hash.
    """
    pins = locked_versions()
    names = sorted({*(pins or _declared()), "torch"})
    installed = {name: installed_version(name) for name in names}
    differs = {name: {"locked": version, "installed": installed[name]}
               for name, version in (pins or {}).items() if installed[name] != version}
    status = "unknown" if pins is None else ("unlocked" if differs else "locked")
    digest = hashlib.sha256(json.dumps(installed, sort_keys=True).encode()).hexdigest()
    return {"status": status, "sha256": digest, "differs": differs, "packages": installed}


def environment_difference(a: list[dict], b: list[dict]) -> str | None:
    """One line naming the packages whose versions differ between two sets of records' `env`
    sections (each side's versions taken from its records' `env.lock.packages`); None when the same."""
    def versions(envs: list[dict]) -> dict[str, set]:
        out: dict[str, set] = {}
        for e in envs:
            for name, version in (((e or {}).get("lock") or {}).get("packages") or {}).items():
                out.setdefault(name, set()).add(version)
        return out

    va, vb = versions(a), versions(b)
    if bool(va) != bool(vb):  # one side predates env.lock: nothing to compare package by package
        return (f"warning: only {'B' if vb else 'A'}'s records name their package versions (the other side's "
                "predate env.lock), so the environments cannot be compared")
    shown = lambda v: "/".join(sorted(str(x) for x in v)) if v else "absent"  # noqa: E731
    changed = [f"{n} {shown(va.get(n))} -> {shown(vb.get(n))}" for n in sorted(set(va) | set(vb))
               if va.get(n) != vb.get(n)]
    if not changed:
        return None
    more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
    return f"warning: the environments differ in {len(changed)} package(s): {', '.join(changed[:8])}{more}"


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (which container limits narrow), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
        **{name: installed_version(name) for name in PACKAGES},
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
        "lock": lock_state(),
    }
