#!/usr/bin/env python
"""End-to-end check that submitit works against the local cluster from scripts/slurm/up.sh.

Usage:  scripts/slurm/up.sh && .venv/bin/python scripts/slurm/check_submitit.py [--folder DIR] [--quick]

Prints, per scenario, what submitit reports (result / exception class + first line, job.state)
and seconds from submit to result. Exits non-zero if any expectation fails.
--quick skips the two ~70-130 s time-limit scenarios.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

DEFAULT_CONF = Path(os.environ.get("PEFT_BENCH_SLURM_DIR", "/tmp/peft-bench-slurm")) / "etc" / "slurm.conf"
if "SLURM_CONF" not in os.environ and DEFAULT_CONF.exists():
    os.environ["SLURM_CONF"] = str(DEFAULT_CONF)

import submitit  # noqa: E402
from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError  # noqa: E402,F401


# ----------------------------------------------------------------- job functions (pickled by value? no:
# submitit pickles with cloudpickle; functions defined in __main__ are pickled by value, fine)
def add(a, b):
    return a + b


def boom():
    raise ValueError("boom from job")


def sleep_for(s):
    time.sleep(s)
    return s


def sleep_ignoring_usr2(s):
    # ignore submitit's pre-timeout USR2 so that Slurm itself kills the job at the time limit
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    time.sleep(s)
    return s


def probe_env():
    keys = ["PEFT_BENCH_PROBE", "SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE",
            "SLURM_MEM_PER_CPU", "SLURM_ARRAY_TASK_ID", "SUBMITIT_EXECUTOR", "SLURM_CONF", "CUDA_VISIBLE_DEVICES"]
    return {
        "env": {k: os.environ.get(k) for k in keys},
        "sys.executable": sys.executable,
        "PATH[0]": os.environ.get("PATH", "").split(":")[0],
        "cwd": os.getcwd(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "job_env": str(submitit.JobEnvironment()),
    }


def span(i):
    t0 = time.time()
    time.sleep(4)
    return (i, t0, time.time(), os.environ.get("SLURM_CPUS_PER_TASK"))


# ----------------------------------------------------------------- helpers
FAILURES: list[str] = []


def expect(cond, what):
    print(f"    {'ok  ' if cond else 'FAIL'} {what}")
    if not cond:
        FAILURES.append(what)


def outcome(job, t_submit):
    """Wait for a job and summarise what submitit reports."""
    try:
        res = job.result()
        exc = None
    except Exception as e:  # noqa: BLE001
        res, exc = None, e
    dt = time.time() - t_submit
    state = job.state
    lines = [] if exc is None else [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0][:160] if lines else ""
    why = [ln for ln in lines if "Error:" in ln or "not requeued" in ln][-1:]  # job-side reason, if any
    if why:
        first += f"  [{why[0][:160]}]"
    print(f"  job {job.job_id}: state={state!r} t={dt:.1f}s "
          + (f"result={res!r}" if exc is None else f"raised {type(exc).__module__}.{type(exc).__name__}: {first}"))
    return res, exc, state, dt


def executor(folder, **params):
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    base = dict(timeout_min=5, cpus_per_task=1, mem_gb=1)
    base.update(params)
    ex.update_parameters(**base)
    return ex


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="submitit-check-"))
    print(f"submitit {submitit.__version__}, SLURM_CONF={os.environ.get('SLURM_CONF')}, folder={folder}")
    T0 = time.time()

    # (a) value
    print("(a) function returning a value, 3 times in a row")
    ex = executor(folder / "a")
    for _ in range(3):
        t = time.time()
        job = ex.submit(add, 2, 3)
        res, exc, state, dt = outcome(job, t)
        expect(res == 5 and exc is None, "result == 5")
    time.sleep(1.5)
    print(f"    state after a forced sacct refresh: {job.watcher.get_state(job.job_id, mode='force')!r}")

    # (b) exception
    print("(b) function raising ValueError")
    t = time.time()
    job = executor(folder / "b").submit(boom)
    res, exc, state, dt = outcome(job, t)
    expect(isinstance(exc, FailedJobError) and "boom from job" in str(exc), "FailedJobError containing the trace")
    time.sleep(1.5)
    print(f"    state after a forced sacct refresh: {job.watcher.get_state(job.job_id, mode='force')!r}")

    # (d) cancel
    print("(d) job.cancel() on a running job")
    t = time.time()
    job = executor(folder / "d").submit(sleep_for, 120)
    end = time.time() + 30
    while time.time() < end and job.watcher.get_state(job.job_id, mode="force") != "RUNNING":
        time.sleep(0.5)
    print(f"    state before cancel: {job.state!r} after {time.time() - t:.1f}s")
    job.cancel()
    tc = time.time()
    res, exc, state, dt = outcome(job, t)
    print(f"    cancel->result() returned after {time.time() - tc:.1f}s")
    expect(isinstance(exc, UncompletedJobError) and state.startswith("CANCELLED"), "UncompletedJobError, CANCELLED")

    # env propagation
    print("(env) driver env var / python / cwd inside the job")
    os.environ["PEFT_BENCH_PROBE"] = "set-by-driver"
    t = time.time()
    job = executor(folder / "env", cpus_per_task=2, mem_gb=2).submit(probe_env)
    res, exc, state, dt = outcome(job, t)
    del os.environ["PEFT_BENCH_PROBE"]
    if res:
        for k, v in res.items():
            print(f"    {k}: {v}")
        expect(res["env"]["PEFT_BENCH_PROBE"] == "set-by-driver", "driver env var visible in job")
        expect(res["sys.executable"] == sys.executable, "job runs driver's sys.executable")

    # array: 1-CPU tasks run 2 at a time; 2-CPU tasks one at a time on a 2-CPU node
    for cpus in (1, 2):
        print(f"(array) 4 tasks with cpus_per_task={cpus} via executor.map_array")
        ex = executor(folder / f"array{cpus}", cpus_per_task=cpus, mem_gb=1)
        t = time.time()
        jobs = ex.map_array(span, range(4))
        rows = [j.result() for j in jobs]
        dt = time.time() - t
        starts = sorted(r[1] - t for r in rows)
        print(f"    job ids {[j.job_id for j in jobs]}, states {[j.state for j in jobs]}")
        print(f"    task start offsets (s): {[round(s, 1) for s in starts]}; all done after {dt:.1f}s")
        # max concurrency from intervals
        ev = sorted([(r[1], 1) for r in rows] + [(r[2], -1) for r in rows])
        cur = peak = 0
        for _, d in ev:
            cur += d
            peak = max(peak, cur)
        print(f"    peak concurrency: {peak}")
        expect(peak == 2 // cpus, f"peak concurrency == {2 // cpus}")

    # too much memory is refused at submission
    print("(mem) mem_gb=1000 (more than the node has)")
    try:
        executor(folder / "mem", mem_gb=1000).submit(add, 1, 1)
        expect(False, "submission refused")
    except Exception as e:  # noqa: BLE001
        first = [ln for ln in str(e).splitlines() if ln.strip()]
        print(f"    raised {type(e).__module__}.{type(e).__name__}: {' | '.join(first)[:300]}")
        expect(True, "submission refused")

    if not args.quick:
        # (c) timeouts: both at once (1 CPU each)
        print("(c1) timeout_min=1, sleeps 300s; submitit's USR2 handler active (default signal_delay_s=90)")
        print("(c2) same, but the job ignores USR2 -> Slurm kills it at the time limit")
        t = time.time()
        j1 = executor(folder / "c1", timeout_min=1).submit(sleep_for, 300)
        j2 = executor(folder / "c2", timeout_min=1).submit(sleep_ignoring_usr2, 300)
        _, e1, s1, _ = outcome(j1, t)
        _, e2, s2, _ = outcome(j2, t)
        expect(isinstance(e1, UncompletedJobError), "c1 raises UncompletedJobError (or subclass)")
        expect(isinstance(e2, UncompletedJobError) and s2 == "TIMEOUT", "c2 UncompletedJobError, TIMEOUT")
        time.sleep(1.5)
        print(f"    c1 state after a forced sacct refresh: {j1.watcher.get_state(j1.job_id, mode='force')!r}")

    print(f"total {time.time() - T0:.1f}s; sacct calls made by submitit's watcher: "
          f"{submitit.SlurmJob.watcher.num_calls}")
    if FAILURES:
        print("FAILED:", *FAILURES, sep="\n  ")
        return 1
    print("ALL OK")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(2)
