"""Scale benchmark (CPU): the harness's own costs on a 10,000-cell grid, against the performance goals.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--records N] [--repeats 3] [--template RECORD.json]
                                                       [--source DIR]
                            [--only report,report-tables,report-again,noop-run-cold,noop-run,grid,estimate] [--smoke]

`--source DIR` measures the `bench` package in DIR instead of this checkout's, e.g. one commit's code
(`git archive COMMIT bench suites | tar -x -C DIR`) or a proposed change, to compare before and after.

Measures, each as the wall time of a child process started the way a user starts it (a fresh
interpreter), the median of `--repeats` runs (with its CPU time and peak RSS, read with wait4):

1. `peft-bench report` over N records, the store as `run` leaves it (with its index)   goal <= 10 s
   and the same with `--format csv,tex` (no plots drawn), to tell the records' cost from the figures',
   and again into the folder of an identical earlier report (its figures unchanged, so none is drawn)
2. a no-op `peft-bench run` over N already-recorded cells       goal <= 5 s
   cold: the suite's index (results/<suite>/.index) removed before each run, so every record is read;
   warm: with the index a run leaves behind (one untimed run first), so no record is read
3. grid expansion of N cells (load_suite + grid.expand)         goal <= 2 s
4. `peft-bench estimate --model llama-2-70b --method lora`      goal <= 10 s and < 2 GB peak RSS

How the N records are made without training N cells: one real tiny cell is trained first (smoke's lora on
tiny-gpt2 / synth-polarity, ~20-40 s; or `--template` names an ok record to reuse), then a suite YAML whose
grid is 25 methods x 5 tiny models x 4 synthetic tasks (minus the encoders' generation and multiple-choice
tasks: 400 groups) x ceil(N / 400) seeds is expanded with the harness's own grid.expand, and each cell
gets a copy of the real record whose `cell` block is the harness's own `record.new_record(cell)["cell"]`
(id, suite, label, method, family, model, task, seed, resolved config) and whose scores are the task's
metrics (a seeded random value), written as `Store.path(suite, id)`, in Store.write's format. Before
timing, every synthetic record is checked to read back as the store reads it (Store.read) and to need no
run (runner.needs_run); after each timed command the output is checked: the no-op run must say it ran
nothing and that every cell was already recorded, and leave the store's files as they were; the report
must say it holds N records, all ok, and its survey CSVs' `n` columns must add up to N. A goal that is
missed is profiled (cProfile) and the functions that dominate are printed. The estimate's imports alone
are also timed in a child of their own, since they are most of its time.

Everything is written under one temporary folder (removed at the end unless --keep), the tokenised-data
cache of the real cell included (PEFT_BENCH_CACHE); nothing goes into the repository's results/ or reports/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, child_env, machine, short_path, use_source, work_folder  # noqa: E402
from benchmarks.scale_store import (METHODS, MODELS, SUITE_NAME, TASKS, check_grid, check_noop,  # noqa: E402
                                    check_report, cli, figure_stamps, record_files, run_child, scale_suite,
                                    synthesise, template_record)

SOURCE = REPO  # the folder whose `bench` package is measured (--source); children find it first on PYTHONPATH
GB = 2 ** 30
GOALS = {  # name: (what, seconds, peak RSS bytes or None)
    "report": ("report over {n} records", 10.0, None),
    "report-tables": ("report over {n} records, tables only (--format csv,tex: no plots)", 10.0, None),
    "report-again": ("report over {n} records again, into its earlier folder (no figure changed: none drawn)", 10.0,
                     None),
    "noop-run-cold": ("no-op run over {n} recorded cells, cold (no index: every record read)", 5.0, None),
    "noop-run": ("no-op run over {n} recorded cells, warm (the index a run leaves)", 5.0, None),
    "grid": ("grid expansion of {n} cells", 2.0, None),
    "estimate": ("estimate llama-2-70b (lora)", 10.0, 2 * GB),
}

# --smoke's: each kind of check; not the reports that draw figures or the estimate (~25 s and ~11 s at any size).
SMOKE_MEASUREMENTS = ["report-tables", "noop-run-cold", "noop-run", "grid"]
# What one child process does for the grid measurement: what `run` does before it reads any record.
GRID_CHILD = """\
import json, sys, time
t0 = time.perf_counter()
from bench.plan import grid, suite
t1 = time.perf_counter()
s = suite.load_suite(sys.argv[1])
t2 = time.perf_counter()
cells = grid.expand(s)
t3 = time.perf_counter()
print(json.dumps({"cells": len(cells), "import_s": t1 - t0, "load_suite_s": t2 - t1, "expand_s": t3 - t2}))
"""

# What `peft-bench estimate --model llama-2-70b --method lora` imports before it computes anything.
ESTIMATE_IMPORTS = ("from bench.models import quiet_libraries; quiet_libraries(); import bench.tools.estimate, "
                    "peft, transformers.models.llama.modeling_llama")


def profile(name: str, args: list, env: dict, tmp: Path, top: int) -> str:
    """Rerun a measurement under cProfile: the harness's functions by cumulative time, the import of torch,
    and the functions with the most time of their own, each with its share of the profiled run."""
    out = tmp / f"{name}.prof"
    target = ["-m", "bench", *args] if args[0] != "GRID" else args[1:]
    run_child([sys.executable, "-m", "cProfile", "-o", out, *target], env, tmp).check(f"profile of {name}")
    stats = pstats.Stats(str(out)).stats
    total = max(v[3] for v in stats.values())  # the outermost frame's cumulative time
    bench_dir = str(SOURCE / "bench") + "/"

    def where(func) -> str:
        file, line, fn = func
        return f"{short_path(file, SOURCE)}:{line}:{fn}" if line else fn

    def line(value: float, calls: int, func) -> str:
        return f"    {value:7.2f} s {100 * value / total:5.1f} %  {calls:>9} calls  {where(func)}"

    lines = [f"profile of {name}: {total:.2f} s under cProfile (which slows Python code unevenly: read the shares)"]
    ours = sorted(((f, v) for f, v in stats.items() if f[0].startswith(bench_dir) and v[3] < 0.98 * total),
                  key=lambda kv: kv[1][3], reverse=True)
    lines.append(f"  harness functions (bench/) by cumulative time, top {top}:")
    lines += [line(v[3], v[1], f) for f, v in ours[:top]]
    torch_import = [v[3] for f, v in stats.items() if f[0].endswith("torch/__init__.py") and f[2] == "<module>"]
    if torch_import:
        lines.append(f"  import torch: {torch_import[0]:.2f} s ({100 * torch_import[0] / total:.1f} %)")
    lines.append(f"  own time (excluding callees), top {top}:")
    lines += [line(v[2], v[1], f) for f, v in sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=10000, help="records / cells to measure over (default 10000)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported (default 3)")
    p.add_argument("--template", help="an ok record JSON to copy instead of training one real smoke cell")
    p.add_argument("--source", help="the folder holding the `bench` package to measure, e.g. a `git archive` of a "
                                    "commit or a proposed change (default: this repository)")
    p.add_argument("--only", help=f"comma-separated measurements among {','.join(GOALS)} (default all)")
    p.add_argument("--no-profile", action="store_true", help="do not profile a missed goal")
    p.add_argument("--top", type=int, default=15, help="functions listed per profile (default 15)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("--smoke", action="store_true",
                   help="one run each of report-tables, noop-run-cold, noop-run and grid (or --only) over 400 records "
                        "(one seed), a template cell of 2 steps, no profiles; the exit code then ignores the goals, "
                        "which are for 10,000 (what the tests run)")
    args = p.parse_args()
    if args.smoke:
        args.records, args.repeats, args.no_profile = 400, 1, True
        args.only = args.only or ",".join(SMOKE_MEASUREMENTS)
    global SOURCE
    # this process's own imports (grid expansion, records) from the code it measures
    SOURCE = use_source(args.source)
    if not (SOURCE / "bench" / "__init__.py").is_file():
        p.error(f"--source {SOURCE}: no bench/__init__.py there")
    only = args.only.split(",") if args.only else list(GOALS)
    for name in only:
        if name not in GOALS:
            p.error(f"unknown measurement {name!r}; choose among {', '.join(GOALS)}")

    with work_folder("peft-bench-scale-", keep=args.keep) as tmp:
        # the real cell's tokenised data stays in the temporary folder; without CI, as a user runs the commands
        env = child_env(SOURCE, tmp / "cache", CI=None)
        print(f"{machine()}\nmeasuring: {SOURCE / 'bench'}\ntemporary folder: {tmp}", flush=True)
        suite_path, seeds = scale_suite(tmp, args.records)
        results = tmp / "results"
        cells = 0
        if set(only) - {"estimate"}:
            template = template_record(tmp, env, args.template, SOURCE, args.smoke)
            start = time.perf_counter()
            cells = synthesise(suite_path, results, template)
            print(f"suite {suite_path.name}: {len(METHODS)} methods x {len(MODELS)} models x {len(TASKS)} tasks "
                  f"(encoders without choice/digits) x {seeds} seeds = {cells} cells; {cells} synthetic ok "
                  f"records written and read back in {time.perf_counter() - start:.1f} s", flush=True)

        commands = {
            "report": lambda i: cli() + ["report", "--suite", suite_path, "--results", results,
                                         "--out", tmp / f"reports-{i}"],
            "report-tables": lambda i: cli() + ["report", "--suite", suite_path, "--results", results,
                                                "--out", tmp / f"reports-{i}", "--format", "csv,tex"],
            "report-again": lambda i: cli() + ["report", "--suite", suite_path, "--results", results,
                                               "--out", tmp / "reports-again"],
            "noop-run": lambda i: cli() + ["run", "--suite", suite_path, "--results", results, "--quiet"],
            "noop-run-cold": lambda i: cli() + ["run", "--suite", suite_path, "--results", results, "--quiet"],
            "grid": lambda i: [sys.executable, tmp / "grid_child.py", suite_path],
            "estimate": lambda i: cli() + ["estimate", "--model", "llama-2-70b", "--method", "lora"],
        }
        (tmp / "grid_child.py").write_text(GRID_CHILD)
        rows, notes, profiles = [], [], []
        if any(name.startswith("report") for name in only):  # the store as `run` leaves it: with its index
            run_child(commands["noop-run"]("prime"), env, tmp).check("noop-run")
        for name in only:
            runs, parts, loads = [], [], []
            noop = name.startswith("noop-run")
            index = results / SUITE_NAME / ".index"  # a cache of the store (bench/run/store.py: Store.scan)
            before = record_files(results / SUITE_NAME) if noop else None
            if name == "noop-run":  # the index a run leaves behind (it indexes what it wrote)
                run_child(commands[name]("prime"), env, tmp).check(name)
            if name == "report-again":  # the earlier report of the same records, whose figures are reused
                run_child(commands[name]("prime"), env, tmp).check(name)
                drawn = figure_stamps(tmp / "reports-again")
            for i in range(args.repeats):
                if name == "noop-run-cold":
                    index.unlink(missing_ok=True)
                child = run_child(commands[name](i), env, tmp).check(name)
                if name == "report-again":
                    check_report(child, tmp / "reports-again", cells)
                    if figure_stamps(tmp / "reports-again") != drawn:
                        raise SystemExit("the report again drew figures whose data had not changed")
                elif name.startswith("report"):
                    check_report(child, tmp / f"reports-{i}", cells, markdown=name == "report")
                    shutil.rmtree(tmp / f"reports-{i}")
                elif noop:
                    check_noop(child, cells)
                    if record_files(results / SUITE_NAME) != before:
                        raise SystemExit("the no-op run changed the store's records")
                elif name == "grid":
                    parts.append(check_grid(child, cells))
                elif name == "estimate" and not ("llama-2-70b" in child.out and "predicted_peak_bytes" in child.out):
                    raise SystemExit(f"estimate printed no 70B figures:\n{child.out[-2000:]}")
                runs.append(child)
                loads.append(os.getloadavg()[0])
                print(f"  {name} run {i + 1}/{args.repeats}: {child.wall:.2f} s wall, {child.cpu:.2f} s CPU, peak RSS "
                      f"{child.maxrss / 2**20:.0f} MiB (load average {loads[-1]:.2f})", flush=True)
            if name == "estimate":
                floor = run_child([sys.executable, "-c", ESTIMATE_IMPORTS], env, tmp).check("estimate imports")
                notes.append(f"estimate: its imports alone (torch, transformers' LLaMA code, peft, bench.cell.recipe, "
                             f"bench.tools.estimate), in a child of their own: {floor.wall:.2f} s wall, "
                             f"{floor.cpu:.2f} s CPU, {floor.maxrss / 2**20:.0f} MiB")
            if parts:
                notes.append("grid child, medians: " + ", ".join(
                    f"{k[:-2].replace('_', ' ')} {statistics.median(p[k] for p in parts):.2f} s"
                    for k in ("import_s", "load_suite_s", "expand_s"))
                    + " (the rest of the wall time: interpreter start and exit)")
            wall = statistics.median(c.wall for c in runs)
            rss = statistics.median(c.maxrss for c in runs)
            cpu = statistics.median(c.cpu for c in runs)
            what, goal_s, goal_rss = GOALS[name]
            ok = wall <= goal_s and (goal_rss is None or rss < goal_rss)
            rows.append((name, what.format(n=cells), wall, goal_s, rss, goal_rss, ok, [c.wall for c in runs], cpu))
            notes.append(f"{name}: 1-minute load average after each run: {', '.join(f'{x:.2f}' for x in loads)}")
            if not ok and not args.no_profile:
                if name == "noop-run-cold":
                    index.unlink(missing_ok=True)
                argv = (["GRID", tmp / "grid_child.py", suite_path] if name == "grid"
                        else commands[name]("prof")[len(cli()):])
                profiles.append(profile(name, argv, env, tmp, args.top))
                shutil.rmtree(tmp / "reports-prof", ignore_errors=True)

        print(f"\n{machine()}")
        print(f"date: {dt.date.today().isoformat()}; median of {args.repeats} runs, each a fresh process\n")
        print("| Measurement | Goal | Wall (median) | Runs (s) | CPU (median) | Peak RSS | Ratio to goal | Result |")
        print("|---|---:|---:|---|---:|---:|---:|---|")
        for name, what, wall, goal_s, rss, goal_rss, ok, walls, cpu in rows:
            goal = f"≤ {goal_s:g} s" + (f", < {goal_rss / GB:g} GB RSS" if goal_rss else "")
            ratio = f"{wall / goal_s:.2f}" + (f" (RSS {rss / goal_rss:.2f})" if goal_rss else "")
            print(f"| {what} | {goal} | {wall:.2f} s | {', '.join(f'{w:.2f}' for w in walls)} | {cpu:.2f} s | "
                  f"{rss / 2**20:.0f} MiB | {ratio} | {'pass' if ok else 'FAIL'} |")
        print("Result: the median wall time (and peak RSS) against the goal. CPU: user + system seconds of the "
              "process, what it would take alone on an idle core (except where torch runs threads).")
        for line in notes:
            print(line)
        for text in profiles:
            print("\n" + text)
        if args.smoke:
            print(f"--smoke: {cells} records; the goals are for 10,000, so the exit code ignores them")
        return 0 if args.smoke or all(r[6] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
