"""A process that dies with its parent (Linux): a cell process with the fork server that forked it
(bench/run/executors/cells.py), a sharded cell's rank with its cell process (bench/cell/ranks.py). So a runner killed
with kill -9 leaves nothing running behind it: no cell, no rank holding a GPU.

The kernel sends SIGKILL, which nothing can ignore or defer: torch asks it for SIGINT for the ranks it starts, which
a rank waiting inside a collective does not act on until the wait returns (NCCL's: at its timeout, minutes)."""

from __future__ import annotations

import os
import signal

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process as soon as its parent exits, and exit at once if the parent is already
    gone: its pid is no longer `parent` (the pid the parent had), or, with no `parent` given, this process was handed
    to init. Where prctl is missing (not Linux), orphans remain possible."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1 if parent is None else os.getppid() != parent:  # nobody is waiting for this process
        os._exit(1)
