"""The watchdog of a local Ray instance, a process of its own: `python -m bench.run.executors.ray_watchdog FOLDER`,
started by RayExecutor before the instance. If the runner is killed (-9), the watchdog stops the instance and
removes its folder at once, where Ray's own processes would linger for a minute and leave the folder behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path


def watch(folder: str) -> None:
    """The watchdog of a local Ray instance: wait until the driver closes the pipe (it ended, however: even
    killed), then kill every process still running from the instance's folder and remove the folder."""
    sys.stdin.buffer.read()
    for _ in range(3):  # Ray may start a worker while the first ones die
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()
                and folder.encode() in _cmdline(p)]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            break
        time.sleep(0.2)
    shutil.rmtree(folder, ignore_errors=True)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


if __name__ == "__main__":
    if len(sys.argv) == 2:
        watch(sys.argv[1])
