"""Scale benchmark (CPU): the harness's own costs on a 10,000-cell grid, against the performance goals.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--records N] [--repeats 3] [--template RECORD.json]
                                                       [--source DIR]
                                                       [--only report,report-tables,report-again,noop-run-cold,noop-run,grid,estimate]

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
import copy
import csv
import datetime as dt
import json
import math
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO  # the folder whose `bench` package is measured (--source); children find it first on PYTHONPATH
SUITE_NAME = "scale-bench"
# The grid: every method a suite may list without extra settings (icl needs `shots`; zero-shot and qlora
# are left out as baselines / GPU-only; compacter, child-tuning and prefix-tuning-peft to make it 25).
METHODS = ["full", "head-only", "bitfit", "ln-tuning", "fishmask", "lora", "rslora", "dora", "pissa", "adalora",
           "fourierft", "loha", "lokr", "oft", "boft", "vera", "ia3", "adapter-houlsby", "adapter-pfeiffer",
           "adapter-parallel", "prompt-tuning", "prefix-tuning", "p-tuning", "mam-adapter", "unipelt"]
MODELS = ["tiny-encoder", "tiny-bert", "tiny-t5", "tiny-gpt2", "tiny-llama"]
TASKS = ["synth-polarity", "synth-intensity", "synth-choice", "synth-digits"]
EXCLUDE = [{"model": ["tiny-encoder", "tiny-bert"], "task": ["synth-choice", "synth-digits"]}]  # encoders cannot
GROUPS = len(METHODS) * (len(MODELS) * len(TASKS) - 2 * 2)  # (model, task, method) combinations: 400
# One smoke cell (the suite by path: children run in the temporary folder, and a suite *name* is looked up in
# ./suites).
TEMPLATE_CELL = ["--methods", "lora", "--models", "tiny-gpt2", "--tasks", "synth-polarity"]

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

# ---------------------------------------------------------------------------------------------- children

class Child:
    """A finished child process: exit code, wall seconds, CPU seconds (user + system) and peak RSS (bytes) of
    it and its waited children. On a shared machine the CPU time is the steadier figure (the wall time also
    holds the time other processes had the cores), though not immune to them (shared caches, SMT siblings)."""

    def __init__(self, cmd, rc, wall, cpu, maxrss, out, err):
        self.cmd, self.rc, self.wall, self.cpu, self.maxrss, self.out, self.err = cmd, rc, wall, cpu, maxrss, out, err

    def check(self, what: str) -> "Child":
        if self.rc != 0:
            raise SystemExit(f"{what} failed (exit {self.rc}): {' '.join(map(str, self.cmd))}\n"
                             f"--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}")
        return self


def run_child(cmd: list, env: dict, cwd: Path, timeout: float = 900) -> Child:
    """Run `cmd`, timing its wall clock and reading its own peak RSS with wait4 (per child, unlike
    getrusage(RUSAGE_CHILDREN), which keeps the largest child so far)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, env=env, cwd=cwd)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(cmd, proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024,  # KiB
                     out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def child_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SOURCE) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PEFT_BENCH_CACHE"] = str(tmp / "cache")  # the real cell's tokenised data stays in the temp folder
    env.pop("CI", None)
    return env


def cli() -> list[str]:
    """The console script a user runs, beside this interpreter (else `python -m bench`)."""
    script = Path(sys.executable).parent / "peft-bench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bench"]


# ---------------------------------------------------------------------------------------------- the data

def template_record(tmp: Path, env: dict, given: str | None) -> dict:
    """An ok record of a real tiny cell: trained now (one smoke cell), or read from `given`."""
    if given:
        record = json.loads(Path(given).read_text())
        source = given
    else:
        store = tmp / "template-results"
        smoke = SOURCE / "suites" / "smoke.yaml" if (SOURCE / "suites" / "smoke.yaml").is_file() else REPO / "suites" / "smoke.yaml"
        cell = ["--suite", str(smoke), *TEMPLATE_CELL]
        print(f"training one real cell for the template record: peft-bench run {' '.join(cell)} --quiet", flush=True)
        child = run_child(cli() + ["run", *cell, "--results", store, "--quiet"], env, tmp).check("template cell")
        found = sorted(store.glob("*/*.json"))
        if len(found) != 1:
            raise SystemExit(f"expected one record under {store}, found {len(found)}")
        record, source = json.loads(found[0].read_text()), f"{found[0]} ({child.wall:.0f} s)"
    if record.get("status") != "ok":
        raise SystemExit(f"the template record is not ok ({record.get('status')}): {source}")
    print(f"template record: {source}", flush=True)
    return record


def write_suite(tmp: Path, n: int) -> tuple[Path, int]:
    seeds = max(1, math.ceil(n / GROUPS))
    if seeds > 1000:
        raise SystemExit(f"--records {n} needs {seeds} seeds; a suite allows 1000 (bench/plan/suite.py MAX_SEEDS)")
    lines = [f"name: {SUITE_NAME}",
             "description: synthetic scale benchmark (benchmarks/scale.py); its records are copies of one real cell",
             "methods: [" + ", ".join(METHODS) + "]",
             "models: [" + ", ".join(MODELS) + "]",
             "tasks: [" + ", ".join(TASKS) + "]",
             f"seeds: [{', '.join(str(s) for s in range(1, seeds + 1))}]",
             "train: {batch_size: 32, max_steps: 300, max_length: 64}",
             "exclude:"]
    lines += [f"  - {json.dumps(rule)}" for rule in EXCLUDE]
    path = tmp / f"{SUITE_NAME}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, seeds


def synthesise(suite_path: Path, results: Path, template: dict) -> int:
    """One ok record per cell of the suite, from the template, named and identified as the store expects."""
    from bench.plan import grid, suite
    from bench.record import new_record
    from bench.run.runner import needs_run
    from bench.run.store import Store

    cells = grid.expand(suite.load_suite(str(suite_path)))
    store = Store(results)
    created = dt.datetime.fromisoformat(template["created_at"])
    for i, cell in enumerate(cells):
        record = copy.deepcopy(template)
        fresh = new_record(cell)
        record["cell"] = fresh["cell"]
        ev = cell.task.evaluation
        rng = random.Random(f"{cell.id}")
        base = 40 + 10 * (METHODS.index(cell.label) % 5) + 5 * MODELS.index(cell.model.name)
        record["scores"] = {"main_metric": ev.main_metric,
                            "metrics": {m: round(min(100.0, max(0.0, base + rng.gauss(0, 3))), 2) for m in ev.metrics},
                            "n_examples": (template.get("scores") or {}).get("n_examples")}
        record["env"] = {**(template.get("env") or {}), "seed": cell.seed}
        record["created_at"] = (created + dt.timedelta(seconds=i)).isoformat(timespec="seconds")
        path = store.path(cell.suite, cell.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")  # Store.write's format, no fsync
    bad = [c.id for c in cells if (r := store.read(c.suite, c.id)) is None or needs_run(r, False)]
    if bad:
        raise SystemExit(f"{len(bad)} synthetic records are not usable done records, e.g. {bad[0]}")
    if len(list(store.suite_dir(SUITE_NAME).glob("*.json"))) != len(cells):
        raise SystemExit("the store does not hold exactly one record per cell")
    return len(cells)


# ---------------------------------------------------------------------------------------------- checks

def record_files(folder: Path) -> list:
    """The store folder's files but its index (a cache), with their size and mtime: what a no-op run must not change."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.name != ".index")


def check_noop(child: Child, cells: int) -> None:
    m = re.search(rf"{SUITE_NAME}: (\d+) cells: nothing run; (\d+) already recorded", child.out)
    if not m or int(m.group(1)) != cells or int(m.group(2)) != cells:
        raise SystemExit(f"the no-op run did not skip all {cells} cells:\n{child.out[-2000:]}\n{child.err[-2000:]}")
    if "not usable records" in child.err:
        raise SystemExit(f"the no-op run found unusable records:\n{child.err[-2000:]}")


def figure_stamps(out: Path) -> dict[str, int]:
    """Each plot file of a report folder with its modification time: what a report that reuses them keeps."""
    return {p.name: p.stat().st_mtime_ns for p in (out / SUITE_NAME / "plots").glob("*.*g")}


def check_report(child: Child, out: Path, cells: int, markdown: bool = True) -> None:
    folder = out / SUITE_NAME
    text = (folder / "report.md").read_text() if markdown else ""
    if markdown and f"{cells} records ({cells} ok)" not in text:
        line = next((ln for ln in text.splitlines() if " records (" in ln), "no summary line")
        raise SystemExit(f"report.md does not hold {cells} ok records: {line}")
    if "## Records not shown" in text:
        raise SystemExit("report.md lists records it did not show")
    total = 0
    for path in sorted((folder / "csv").glob("survey-*.csv")):
        with path.open() as f:
            rows = list(csv.DictReader(f))
        total += sum(int(r[k] or 0) for r in rows for k in r if k.endswith(" n"))
    if total != cells:
        raise SystemExit(f"the survey CSVs count {total} ok seeds, not {cells}")


def check_grid(child: Child, cells: int) -> dict:
    info = json.loads(child.out.strip().splitlines()[-1])
    if info["cells"] != cells:
        raise SystemExit(f"grid expansion gave {info['cells']} cells, not {cells}")
    return info


# ---------------------------------------------------------------------------------------------- profile

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
        file = file.replace(str(SOURCE) + "/", "")
        file = re.sub(r"^.*/site-packages/", "", file)
        file = re.sub(r"^.*/lib/python[\d.]+/", "", file)
        return f"{file}:{line}:{fn}" if line else fn

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


# ---------------------------------------------------------------------------------------------- main

def machine() -> str:
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{usable} usable cores ({os.cpu_count()} online), {cpu}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; torch {torch}")


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
    args = p.parse_args()
    global SOURCE
    if args.source:
        SOURCE = Path(args.source).resolve()
        if not (SOURCE / "bench" / "__init__.py").is_file():
            p.error(f"--source {SOURCE}: no bench/__init__.py there")
    sys.path.insert(0, str(SOURCE))  # this process's own imports (grid expansion, records) from the same code
    only = args.only.split(",") if args.only else list(GOALS)
    for name in only:
        if name not in GOALS:
            p.error(f"unknown measurement {name!r}; choose among {', '.join(GOALS)}")

    tmp = Path(tempfile.mkdtemp(prefix="peft-bench-scale-"))
    env = child_env(tmp)
    print(f"machine: {machine()}\nmeasuring: {SOURCE / 'bench'}\ntemporary folder: {tmp}", flush=True)
    try:
        suite_path, seeds = write_suite(tmp, args.records)
        results = tmp / "results"
        cells = 0
        if set(only) - {"estimate"}:
            template = template_record(tmp, env, args.template)
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
                argv = ["GRID", tmp / "grid_child.py", suite_path] if name == "grid" else commands[name]("prof")[len(cli()):]
                profiles.append(profile(name, argv, env, tmp, args.top))
                shutil.rmtree(tmp / "reports-prof", ignore_errors=True)

        print(f"\nmachine: {machine()}")
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
        return 0 if all(r[6] for r in rows) else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
