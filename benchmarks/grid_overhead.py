"""Grid overhead: the share of a grid's wall time spent outside training and evaluation, and what it is.

    PYTHONPATH=. .venv/bin/python benchmarks/grid_overhead.py [--suite smoke] [--methods ..] [--models ..]
                                                              [--tasks ..] [--profile-cell METHOD,MODEL,TASK]
                                                              [--skip-grid] [--source DIR] [--json OUT.json] [--smoke]

1. The grid: `peft-bench run --suite smoke --results <fresh folder> --quiet` (here spelt `python -m bench run`,
   the same CLI; a fresh tokenised-data cache unless --warm-cache), timed from just before the process starts
   to its end. Each record gives `time.load_s` (data, model, method), `time.train_s` (the sum of step times)
   and `time.eval_s` (the final evaluation); cells run one after another (--jobs 1), so a cell's wall time
   is the time between its record file being written and the previous one's (the first cell's includes the
   runner's start and the fork server's imports). Outside training and evaluation = wall - train_s - eval_s:
   process start, imports, model load, tokenisation, the instruments (probe step, FLOPs counting, stored
   size, inference speed), the loop's bookkeeping between steps, record writing. Goal: <= 15 % on CPU.
2. Fixed costs of a run: the runner's own start (the same command again once every cell is recorded: imports,
   suite, grid expansion, plan, no cell), and what the fork server imports before the first cell
   (bench.run.warm, with the grid's architectures and metric libraries as the executor names them), timed in a
   fresh interpreter, with its heaviest imports (python -X importtime).
3. One cell, in a process of its own as the executor runs it (bench.cell.recipe.run_cell on the cell as
   bench.plan.grid.expand makes it; the fork server's imports done first and timed apart), with every phase
   and instrument timed by wrappers (perf_counter, no profiler): once with a cold tokenised-data cache, once
   warm. Then the same cell under cProfile with the profiler paused inside the training loop, so its listing
   is the cell's costs outside training: the top functions by cumulative and by own time (file:function,
   seconds, share of the profiled time; cProfile inflates Python-heavy code, so the wrapper timings are the
   figures to quote and the profile says which functions inside them).

The cell profiled is --profile-cell, else the grid's cell with the most seconds outside training and
evaluation. `--source DIR` measures the `bench` package (and suites) in DIR instead of this checkout's, e.g.
one commit's code (`git archive HEAD bench suites | tar -x -C DIR`). Everything is written under one temporary
folder (removed unless --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # benchmarks/, also for workers run elsewhere
from benchmarks.common import (REPO, child_env, loadavg, machine, print_header, run_checked, run_worker,  # noqa: E402
                               use_source, work_folder)
from benchmarks.grid_overhead_cell import worker  # noqa: E402
from benchmarks.grid_overhead_tables import grid_table, phase_table, profile_table  # noqa: E402

GOAL_SHARE = 15.0  # % of wall time outside training and evaluation, on CPU
SOURCE = REPO  # the folder whose `bench` package (and suites) is measured (--source)


def grid_env(cache: Path, preload: str | None = None) -> dict:
    """The environment of a child run from SOURCE; `preload`: the fork server's module list for the grid, as the
    executor names it (PEFT_BENCH_PRELOAD; None leaves it unset: every module)."""
    return child_env(SOURCE, cache, PEFT_BENCH_PRELOAD=preload)


GRID_PRELOAD = """import sys
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.executors.cells import grid_modules
only = [None if a == "-" else a.split(",") for a in sys.argv[3:6]]
print(",".join(grid_modules(grid.expand(load_suite(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2]), *only))))
"""


def grid_preload(args, work: Path) -> str | None:
    """What the executor has the fork server preload for this grid (its architectures and metric libraries);
    None when SOURCE's executor names nothing (code from before it did: every module is preloaded)."""
    cmd = [sys.executable, "-c", GRID_PRELOAD, args.suite,
           *[getattr(args, k) or "-" for k in ("data_dir", "methods", "models", "tasks")]]
    proc = subprocess.run(cmd, cwd=SOURCE, env=grid_env(work / "cache-imports"), capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_grid(args, work: Path) -> dict:
    results = work / "results"
    cmd = [sys.executable, "-m", "bench", "run", "--suite", args.suite, "--results", str(results), "--quiet"]
    for flag in ("methods", "models", "tasks", "threads", "data_dir"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    print(f"grid: {shlex.join(cmd)}", flush=True)
    launched = time.time()
    proc = run_checked(cmd, "the grid run", cwd=SOURCE, env=grid_env(args.cache_dir))
    ended = time.time()
    folders = [p for p in results.iterdir() if p.is_dir()]
    cells = []
    for path in sorted((f for folder in folders for f in folder.glob("*.json")), key=lambda p: p.stat().st_mtime):
        r = json.loads(path.read_text())
        t, c = r.get("time") or {}, r["cell"]
        cells.append({"id": c["id"], "method": c.get("label") or c["method"],
                      "model": c["model"]["name"] if isinstance(c["model"], dict) else c["model"],
                      "task": c["task"]["name"] if isinstance(c["task"], dict) else c["task"],
                      "status": r["status"], "done_at": path.stat().st_mtime - launched,
                      "load_s": t.get("load_s") or 0.0, "train_s": t.get("train_s") or 0.0,
                      "eval_s": t.get("eval_s") or 0.0, "steps": (r.get("train") or {}).get("steps")})
    previous = 0.0
    for c in cells:
        c["wall_s"] = c["done_at"] - previous
        previous = c["done_at"]
        c["outside_s"] = c["wall_s"] - c["train_s"] - c["eval_s"]
        c["rest_s"] = c["outside_s"] - c["load_s"]
    # The same command again, every cell now recorded: the runner's own start (imports, suite, grid, plan), no cell.
    again = time.time()
    run_checked(cmd, "the no-op rerun", cwd=SOURCE, env=grid_env(args.cache_dir))
    noop_s = time.time() - again
    return {"cmd": cmd, "wall_s": ended - launched, "cells": cells, "stdout": proc.stdout.strip().splitlines()[-1:],
            "noop_s": noop_s}


def run_cell_worker(mode: str, args, work: Path, cell: dict, cache: Path, tag: str) -> dict:
    spec = {"suite": args.suite, "method": cell["method"], "model": cell["model"], "task": cell["task"],
            "threads": args.threads, "data_dir": args.data_dir}
    result = run_worker(__file__, mode, spec, work / "workers" / tag / "result.json", SOURCE,
                        grid_env(cache, args.preload))
    if result["record"]["status"] != "ok":
        print(f"  note: the profiled cell's status is {result['record']['status']}: {result['record']['error']}")
    return result


def import_costs(work: Path, preload: str | None, n: int = 12) -> tuple[float, list[str]]:
    """Wall time of importing bench.run.warm in a fresh interpreter (as the grid's fork server does), and its
    heaviest top-level imports."""
    cmd = [sys.executable, "-X", "importtime", "-c", "import bench.run.warm"]
    launched = time.perf_counter()
    proc = subprocess.run(cmd, cwd=SOURCE, env=grid_env(work / "cache-imports", preload), capture_output=True,
                          text=True)
    wall = time.perf_counter() - launched
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if m and len(m.group(3)) <= 3:  # imported by bench.run.warm itself, or by the interpreter
            rows.append((int(m.group(2)) / 1e6, m.group(4)))
    rows.sort(reverse=True)
    return wall, [f"    {name:48}{seconds:8.2f} s" for seconds, name in rows[:n]]


def main(argv=None) -> int:
    global SOURCE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (top of this file) for what is measured and how.")
    p.add_argument("--suite", default="smoke", help="suite name or YAML path (default: smoke)")
    p.add_argument("--methods", help="only these methods (passed to peft-bench run)")
    p.add_argument("--models", help="only these models")
    p.add_argument("--tasks", help="only these tasks")
    p.add_argument("--threads", type=int, help="torch threads per cell (default: the harness's, the usable cores)")
    p.add_argument("--data-dir", help="--data-dir for peft-bench run (suites with real data)")
    p.add_argument("--warm-cache", action="store_true",
                   help="run the grid with this user's tokenised-data cache ($PEFT_BENCH_CACHE or ~/.cache/peft-bench) "
                        "instead of a fresh one")
    p.add_argument("--profile-cell", help="METHOD,MODEL,TASK of the cell to time and profile (default: the grid's "
                                          "cell with the most seconds outside training and evaluation)")
    p.add_argument("--skip-grid", action="store_true", help="only the fixed costs and the one-cell timing and "
                                                            "profile (needs --profile-cell)")
    p.add_argument("--top", type=int, default=25, help="functions listed per profile table (default 25)")
    p.add_argument("--source", type=Path, default=REPO, help="folder whose bench package (and suites) is measured "
                                                             "(default: this checkout)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (records, worker output)")
    p.add_argument("--smoke", action="store_true", help="every part on one cell of suite ci (lora on the tiny "
                   "encoder), 5 functions per profile table (what the tests run)")
    p.add_argument("--worker", choices=["phases", "profile"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    SOURCE = use_source(args.source)
    if args.worker:
        worker(args.worker, json.loads(args.spec), args.out, SOURCE)
        return 0
    if args.smoke:
        args.suite, args.methods, args.models, args.tasks, args.top = "ci", "lora", "tiny-encoder", "synth-polarity", 5
    if args.skip_grid and not args.profile_cell:
        p.error("--skip-grid needs --profile-cell METHOD,MODEL,TASK")
    if args.data_dir:
        args.data_dir = str(Path(args.data_dir).resolve())
    if not Path(args.suite).suffix:  # a suite name: the measured source's suites/
        if not (SOURCE / "suites" / f"{args.suite}.yaml").is_file():
            p.error(f"no suite {args.suite!r} under {SOURCE / 'suites'}")
    else:
        args.suite = str(Path(args.suite).resolve())

    print_header("Grid overhead: the share of wall time outside training and evaluation", __file__,
                 argv if argv is not None else sys.argv[1:], SOURCE)
    print(f"load average at start: {loadavg()}\n", flush=True)
    summary: dict = {"machine": machine()}
    with work_folder("grid-overhead-", keep=args.keep) as work:
        user_cache = Path(os.environ.get("PEFT_BENCH_CACHE", "~/.cache/peft-bench")).expanduser()
        args.cache_dir = user_cache if args.warm_cache else work / "cache-grid"
        args.preload = grid_preload(args, work)  # what the grid's fork server imports (bench.run.executors)
        if not args.skip_grid:
            grid = run_grid(args, work)
            summary["grid"] = grid
            total = grid["wall_s"]
            outside = total - sum(c["train_s"] + c["eval_s"] for c in grid["cells"])
            share = 100 * outside / total
            cache = "this user's" if args.warm_cache else "a fresh"
            print(f"1. The grid: {len(grid['cells'])} cells, {total:.1f} s wall ({cache} tokenised-data cache); "
                  f"{grid['stdout'][0] if grid['stdout'] else ''}")
            print("\n".join(grid_table(grid, True)))
            print(f"  => outside training and evaluation: {outside:.1f} s of {total:.1f} s = {share:.1f} % "
                  f"(goal <= {GOAL_SHARE:g} %: {'MET' if share <= GOAL_SHARE else 'MISSED'}); "
                  f"load average {loadavg()}\n",
                  flush=True)
            summary["share_outside_pct"] = share

        wall, heaviest = import_costs(work, args.preload)
        print("2. Fixed costs, once per run (in the first cell's wall above):")
        if not args.skip_grid:
            print(f"   the runner's own start: the same command again with every cell recorded (imports, suite, grid, "
                  f"plan; no cell runs): {grid['noop_s']:.1f} s")
            summary["noop_run_s"] = grid["noop_s"]
        print(f"   the fork server's preload: importing bench.run.warm in a fresh interpreter: {wall:.1f} s "
              "(python -X importtime adds a little); it and its heaviest direct imports (cumulative seconds):")
        print("\n".join(heaviest) + "\n", flush=True)
        summary["preload_wall_s"] = wall

        if args.profile_cell:
            method, model, task = (x.strip() for x in args.profile_cell.split(","))
            cell = {"method": method, "model": model, "task": task}
        else:
            ok = [c for c in grid["cells"] if c["status"] == "ok"]
            cell = max(ok[1:] or ok, key=lambda c: c["outside_s"])  # the first cell's wall includes the run's start
        name = f"{cell['method']} / {cell['model']} / {cell['task']}"
        cold = run_cell_worker("phases", args, work, cell, work / "cache-cold", "cold")
        warm = run_cell_worker("phases", args, work, cell, work / "cache-cold", "warm")  # the cold run filled it
        prof = run_cell_worker("profile", args, work, cell, work / "cache-cold", "profile")
        print(f"3. One cell, {name} (bench.cell.recipe.run_cell in a process of its own), phases timed by wrappers:")
        print("\n".join(phase_table(cold, warm)))
        if not args.skip_grid:
            in_grid = next((c for c in grid["cells"] if (c["method"], c["model"], c["task"]) ==
                            (cell["method"], cell["model"], cell["task"])), None)
            if in_grid:
                first = in_grid is grid["cells"][0]
                fixed = grid["noop_s"] + warm["preload_s"] if first else 0.0
                print(f"  in the grid this cell spent {in_grid['outside_s']:.2f} s outside training and evaluation"
                      f"{f' ({fixed:.2f} s of it the run start and preload: it ran first)' if first else ''}, "
                      f"run_cell here {warm['outside_s']:.2f} s (warm cache): the executor's fork, cell-process setup "
                      "and "
                      f"record hand-over, about {in_grid['outside_s'] - fixed - warm['outside_s']:.2f} s (two runs of "
                      "the cell on a shared machine: approximate)")
        print()
        print("   The same cell under cProfile, the training loop not profiled:")
        print("\n".join(profile_table(prof, args.top)))
        print(f"load average at end: {loadavg()}")
        summary.update(profiled_cell=name, phases_cold=cold, phases_warm=warm,
                       profile_top=sorted(prof["profile"], key=lambda r: -r["cum_s"])[:200])
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
