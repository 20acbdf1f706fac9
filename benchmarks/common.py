"""What a benchmark's numbers were measured on, printed with them: the CPU, usable cores, versions, load."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """One line: CPU model, usable and online cores, Python, torch, transformers and peft, the OS."""
    import peft
    import torch
    import transformers

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {cpu}; {cores} usable cores ({os.cpu_count()} online); Python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
            f"{platform.platform()}")


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages: how busy the machine was (shared cores distort timings)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def print_header(title: str, script: str, argv: list[str], repo: Path, source: Path) -> None:
    """The title, the machine, the command that reproduces the run, and which code it measures."""
    import shlex
    import sys

    print(title)
    print(machine())
    python = Path(sys.executable)
    python = os.path.relpath(python, repo) if python.is_relative_to(repo) else str(python)
    print("reproduce (from the repository root): PYTHONPATH=. " + shlex.join([python, os.path.relpath(script, repo),
                                                                              *argv]))
    if source != repo:
        print(f"measuring the bench package in {source}")
