"""Methods that fail on purpose, for tests/test_faults.py: each breaks a cell in one way a real run can
break (an exception, a hang, a diverging loss, a crash with output, a kill, memory exhaustion, a trainable
parameter that gets no gradient), plus
one that logs every training it starts, so tests can count trainings rather than records.

A suite names this module in `method_modules`; importing it registers the methods."""

from __future__ import annotations

import os
import resource
import signal
import sys
import time

import torch

from bench import methods
from bench.methods.base import Adapted, Method


def _full(model) -> Adapted:
    for p in model.parameters():
        p.requires_grad_(True)
    return Adapted(model)


def _raise(model, config, ctx):
    raise RuntimeError("injected failure in build")


def _hang(model, config, ctx):
    time.sleep(3600)


def _crash(model, config, ctx):
    print("the last words of a crashing cell", file=sys.stderr, flush=True)
    os._exit(3)


def _kill(model, config, ctx):
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_worker(model, config, ctx):
    """SIGKILL the process that started this cell's fork server: under Ray, the Ray worker running the
    cell (a lost worker); never use it locally, where that process is the runner."""
    with open(f"/proc/{os.getppid()}/stat") as f:
        worker = int(f.read().rsplit(")", 1)[1].split()[1])
    os.kill(worker, signal.SIGKILL)
    time.sleep(60)  # the cell dies with its fork server


def _exhaust(model, config, ctx):
    """Allocate until the allocator says no, under an address-space limit: an OOM without the OOM killer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), hard))
    hoard = []
    try:
        while True:
            hoard.append(bytearray(16 << 20))
    finally:
        hoard.clear()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _nan(model, config, ctx):
    """Full fine-tuning whose weights turn NaN after the second optimizer step."""
    adapted = _full(model)

    def poison(step: int) -> None:
        if step == 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    adapted.after_step.append(poison)
    return adapted


def _detached(model, config, ctx):
    """Full fine-tuning plus a trainable prefix that the forward never reads, as when a library stops taking
    the keyword a method passes its prefix in."""
    adapted = _full(model)
    model.register_parameter("ignored_prefix", torch.nn.Parameter(torch.zeros(4, 8)))
    return adapted


def _slow(model, config, ctx):
    """Full fine-tuning at one step per second: a cell that times out mid-training."""
    adapted = _full(model)
    adapted.after_step.append(lambda step: time.sleep(1.0))
    return adapted


def _logged(model, config, ctx):
    """Full fine-tuning that appends a line to `config['log']` for every training it starts."""
    with open(config["log"], "a") as f:
        f.write(f"{os.getpid()}\n")
    if config["sleep_s"]:
        time.sleep(config["sleep_s"])
    return _full(model)


def _oom_at_first(model, config, ctx):
    """Full fine-tuning whose first `times` builds raise CUDA's out-of-memory error (each build appends a line to
    `config['log']`): a cell that runs out of memory packed beside others, then fits alone."""
    with open(config["log"], "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(config["log"]) as f:
        if len(f.readlines()) <= config["times"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
    return _full(model)


def _oom_on_rank_1(model, config, ctx):
    """Full fine-tuning whose build raises CUDA's out-of-memory error on a sharded cell's second rank only (RANK 1,
    bench/cell/ranks.py), as one GPU of several running out would."""
    if os.environ.get("RANK") == "1":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory on rank 1 (injected)")
    return _full(model)


def _raise_on_rank_1_hang_on_rank_0(model, config, ctx):
    """A sharded cell's rank 1 raises in its build while rank 0 hangs, as rank 0 waits on NCCL in its next
    collective for a peer that has stopped (until NCCL's timeout, minutes)."""
    if os.environ.get("RANK") == "1":
        raise ValueError("rank 1's build failed (injected)")
    time.sleep(3600)


def _kill_on_rank_1(model, config, ctx):
    """A sharded cell's rank 1 SIGKILLs its own process in its build (no record, no traceback: as the kernel's OOM
    killer would end it) once rank 0 is in its build too; rank 0 builds on and waits in its first collective for the
    lost peer. Each rank first appends "<rank> <pid>" to `config['log']`."""
    with open(config["log"], "a") as f:
        f.write(f"{os.environ.get('RANK')} {os.getpid()}\n")
    if os.environ.get("RANK") == "1":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "0" not in [line.split()[0] for line in open(config["log"])]:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    return _full(model)


def _exit_on_rank_1(model, config, ctx):
    """A sharded cell's rank 1 exits with code 0 in its build (no record: as a library calling exit would), rank 0
    builds on and waits in its first collective for the lost peer."""
    if os.environ.get("RANK") == "1":
        os._exit(0)
    return _full(model)


def _deaf_and_hang(model, config, ctx):
    """Appends "<rank> <pid>" to `config['log']`, then ignores SIGINT and hangs: a process that an interrupt does not
    stop, as a rank is while it waits inside a collective (NCCL's wait returns to Python only at its timeout)."""
    with open(config["log"], "a") as f:
        f.write(f"{os.environ.get('RANK')} {os.getpid()}\n")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(3600)


def _spawn_and_hang(model, config, ctx):
    """Starts a child process (as a data loader's worker or a tool would), logs its pid, and hangs."""
    import subprocess

    child = subprocess.Popen(["sleep", "600"])
    with open(config["log"], "a") as f:
        f.write(f"{child.pid}\n")
    time.sleep(3600)


def _visible_gpus(model, config, ctx):
    """Full fine-tuning that appends the GPUs its process may see (CUDA_VISIBLE_DEVICES) to `config['log']`."""
    with open(config["log"], "a") as f:
        f.write(f"{os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
    return _full(model)


PAPER = "fault injection (tests only)"
methods.register(
    Method("fault-raise", "baseline", "raises in build", PAPER, _raise),
    Method("fault-hang", "baseline", "sleeps for an hour in build", PAPER, _hang),
    Method("fault-crash", "baseline", "prints a line and exits with code 3", PAPER, _crash),
    Method("fault-kill", "baseline", "SIGKILLs its own process", PAPER, _kill),
    Method("fault-kill-worker", "baseline", "SIGKILLs the Ray worker running it", PAPER, _kill_worker),
    Method("fault-exhaust", "baseline", "allocates until MemoryError", PAPER, _exhaust),
    Method("fault-detached", "baseline", "full fine-tuning plus a trainable parameter nothing reads", PAPER,
           _detached),
    Method("fault-slow", "baseline", "full fine-tuning at one step per second", PAPER, _slow),
    Method("fault-nan", "baseline", "full fine-tuning whose weights become NaN after step 2", PAPER, _nan),
    Method("logged-full", "baseline", "full fine-tuning that logs each training", PAPER, _logged,
           defaults={"log": "", "sleep_s": 0.0}),
    Method("fault-oom-at-first", "baseline", "raises CUDA's out-of-memory error in its first builds", PAPER,
           _oom_at_first, defaults={"log": "", "times": 1}),
    Method("fault-oom-on-rank-1", "baseline", "raises CUDA's out-of-memory error on rank 1 only", PAPER,
           _oom_on_rank_1),
    Method("fault-raise-on-rank-1-hang-on-rank-0", "baseline", "raises on rank 1, hangs on rank 0", PAPER,
           _raise_on_rank_1_hang_on_rank_0),
    Method("fault-kill-on-rank-1", "baseline", "SIGKILLs its own process on rank 1 only", PAPER, _kill_on_rank_1,
           defaults={"log": ""}),
    Method("fault-exit-on-rank-1", "baseline", "exits with code 0 on rank 1 only", PAPER, _exit_on_rank_1),
    Method("fault-deaf-hang", "baseline", "logs its rank and pid, ignores SIGINT, hangs", PAPER, _deaf_and_hang,
           defaults={"log": ""}),
    Method("fault-spawn-hang", "baseline", "starts a child process, logs its pid, hangs", PAPER, _spawn_and_hang,
           defaults={"log": ""}),
    Method("visible-gpus-full", "baseline", "full fine-tuning that logs CUDA_VISIBLE_DEVICES", PAPER, _visible_gpus,
           defaults={"log": ""}),
)
