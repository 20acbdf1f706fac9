"""Grid overhead: the share of a grid's wall time spent outside training and evaluation, and what it is.

    PYTHONPATH=. .venv/bin/python benchmarks/grid_overhead.py [--suite smoke] [--methods ..] [--models ..]
                                                              [--tasks ..] [--profile-cell METHOD,MODEL,TASK]
                                                              [--skip-grid] [--source DIR] [--json OUT.json]

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
import tempfile
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # benchmarks/, also for workers run elsewhere
from benchmarks.machine import loadavg, machine, print_header  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GOAL_SHARE = 15.0  # % of wall time outside training and evaluation, on CPU


# ---------------------------------------------------------------------------------------------------------
# The one-cell worker (a child process): phases timed by wrappers, or profiled.

def _find_cell(spec: dict):
    from bench.plan import grid
    from bench.plan.suite import load_suite

    suite = load_suite(spec["suite"], spec["data_dir"])
    cells = grid.expand(suite, [spec["method"]], [spec["model"]], [spec["task"]], threads=spec["threads"])
    if len(cells) != 1:
        raise SystemExit(f"{spec['method']} / {spec['model']} / {spec['task']} is {len(cells)} cells of "
                         f"{spec['suite']}, not one")
    return cells[0]


def _checkpoint(folder: Path):
    """What the executor's cell process does with the partial record (bench/run/executors.py)."""
    from bench.run.store import atomic_write

    path = folder / "cell.partial"
    return lambda partial: atomic_write(path, json.dumps(partial, default=str).encode())


class Phases:
    """Wall seconds per wrapped function (calls summed). A wrapped function called while another runs is
    recorded under it ("outer > inner"), so the top-level labels never overlap."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.stack: list[str] = []

    def wrap(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        phases = self

        def timed(*args, **kwargs):
            key = label if not phases.stack else f"{phases.stack[0]} > {label}"
            phases.stack.append(label)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases.seconds[key] = phases.seconds.get(key, 0.0) + time.perf_counter() - start
                phases.stack.pop()

        timed.__wrapped__ = original
        setattr(owner, attr, timed)


# (label, module, attribute): the recipe's phases, what setup does, the instruments. One called inside another is
# shown under it, indented ("setup > model + head + tokenizer"); "other" is run_cell minus the top-level ones.
_I = "bench.cell.instruments:"
WRAPPED = [
    ("prepare process (threads, quiet libraries, method modules)", "bench.cell.recipe", "prepare_process"),
    ("env.collect (versions, lock state, git, CPU)", "bench.env", "collect"),
    ("setup = time.load_s", "bench.cell.recipe", "setup"),
    ("model + head + tokenizer (load_bundle)", "bench.cell.recipe", "load_bundle"),
    ("training data and evaluation sets: read, tokenise or cache (datasets)", "bench.cell.recipe", "datasets"),
    ("method applied (Method.apply)", "bench.methods.base:Method", "apply"),
    ("instrument: what setup resolved (weights dtype, data revisions, example ids)", _I + "Resolved", "loaded"),
    ("instrument: static figures after loading (params, weight bytes)", _I + "StaticFigures", "loaded"),
    ("instrument: probe step (activations, grads, training FLOPs)", _I + "StepProbe", "before_training"),
    ("instrument: inference FLOPs (FlopCounterMode over 8 predictions)", _I + "InferenceFlops", "loaded"),
    ("instrument: peak-memory windows (clear_refs, VmHWM)", "bench.cell.measure:PeakMemory", "_start"),
    ("instrument: peak-memory windows (clear_refs, VmHWM) ", "bench.cell.measure:PeakMemory", "_fold"),
    ("training loop (recipe.train)", "bench.cell.recipe", "train"),
    ("instrument: after training (memory breakdown, FLOPs, throughput)", _I + "StepProbe", "trained"),
    ("instrument: after training (memory breakdown, FLOPs, throughput) ", _I + "Throughput", "trained"),
    ("final evaluation = time.eval_s (recipe.evaluate)", "bench.cell.recipe", "evaluate"),
    ("instrument: stored size (state dict -> safetensors file)", _I + "StaticFigures", "evaluated"),
    ("instrument: inference speed (latency, batched, merged copy)", _I + "InferenceSpeed", "evaluated"),
    ("checkpoint callback (partial record writes)", "__checkpoint__", None),
]


def _owner(path: str):
    import importlib

    module, _, cls = path.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, cls) if cls else mod


def worker(mode: str, spec: dict, out: Path) -> None:
    launched = float(os.environ["GO_LAUNCH"])
    result = {"mode": mode}
    start = time.perf_counter()
    import bench.run.warm  # noqa: F401  what the fork server imports before any cell (once per run)
    result["preload_s"] = time.perf_counter() - start
    result["started_to_preloaded_s"] = time.time() - launched
    cell = _find_cell(spec)
    result["cell"] = cell.line()
    from bench.cell import recipe

    checkpoint = _checkpoint(out.parent)
    if mode == "phases":
        phases = Phases()
        for label, owner, attr in WRAPPED:
            if owner == "__checkpoint__":
                holder = type("Holder", (), {"f": staticmethod(checkpoint)})
                phases.wrap(holder, "f", label)
                checkpoint = holder.f
            else:
                phases.wrap(_owner(owner), attr, label)
        t0 = time.perf_counter()
        record = recipe.run_cell(cell, quiet=True, checkpoint=checkpoint)
        total = time.perf_counter() - t0
        merged: dict[str, float] = {}
        for label, seconds in phases.seconds.items():  # labels that differ by a trailing space are one phase
            key = " > ".join(part.strip() for part in label.split(" > "))
            merged[key] = merged.get(key, 0.0) + seconds
        result.update(run_cell_s=total, phases=merged)
    else:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        original_train = recipe.train

        def train_unprofiled(*args, **kwargs):  # the training loop is not what this profile is for
            profiler.disable()
            t = time.perf_counter()
            try:
                return original_train(*args, **kwargs)
            finally:
                result["train_window_s"] = time.perf_counter() - t
                profiler.enable()

        recipe.train = train_unprofiled
        t0 = time.perf_counter()
        profiler.enable()
        record = recipe.run_cell(cell, quiet=True, checkpoint=checkpoint)
        profiler.disable()
        result["run_cell_s"] = time.perf_counter() - t0
        stats = pstats.Stats(profiler)
        rows = []
        for (filename, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
            rows.append({"where": f"{_short(filename)}:{line}:{name}", "calls": nc, "own_s": tt, "cum_s": ct})
        result["profile"] = rows
        result["profiled_s"] = result["run_cell_s"] - result.get("train_window_s", 0.0)
    result["record"] = {"status": record["status"], "error": record["error"], "time": record["time"],
                        "train_steps": record["train"].get("steps")}
    out.write_text(json.dumps(result))


def _short(filename: str) -> str:
    """A file name as `package/module.py` (site-packages and the repository stripped)."""
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    for root in (str(REPO) + "/", str(SOURCE) + "/"):
        if filename.startswith(root):
            filename = filename[len(root):]
    return filename


# ---------------------------------------------------------------------------------------------------------
# The parent.

SOURCE = REPO


def child_env(work: Path, cache: Path, preload: str | None = None) -> dict:
    """The environment of a child run from SOURCE; `preload`: the fork server's module list for the grid, as
    the executor names it (PEFT_BENCH_PRELOAD; None leaves it unset: every module)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE), *filter(None, [env.get("PYTHONPATH")])])
    env["PEFT_BENCH_CACHE"] = str(cache)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", CI="true")
    env.pop("PEFT_BENCH_PRELOAD", None)
    if preload is not None:
        env["PEFT_BENCH_PRELOAD"] = preload
    return env


GRID_PRELOAD = """import sys
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.executors import grid_modules
only = [None if a == "-" else a.split(",") for a in sys.argv[3:6]]
print(",".join(grid_modules(grid.expand(load_suite(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2]), *only))))
"""


def grid_preload(args, work: Path) -> str | None:
    """What the executor has the fork server preload for this grid (its architectures and metric libraries);
    None when SOURCE's executor names nothing (code from before it did: every module is preloaded)."""
    cmd = [sys.executable, "-c", GRID_PRELOAD, args.suite,
           *[getattr(args, k) or "-" for k in ("data_dir", "methods", "models", "tasks")]]
    proc = subprocess.run(cmd, cwd=SOURCE, env=child_env(work, work / "cache-imports"), capture_output=True, text=True)
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
    proc = subprocess.run(cmd, cwd=SOURCE, env=child_env(work, args.cache_dir), capture_output=True, text=True)
    ended = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"the grid run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
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
    noop = subprocess.run(cmd, cwd=SOURCE, env=child_env(work, args.cache_dir), capture_output=True, text=True)
    noop_s = time.time() - again
    if noop.returncode != 0:
        raise SystemExit(f"the no-op rerun failed:\n{noop.stdout[-3000:]}\n{noop.stderr[-3000:]}")
    return {"cmd": cmd, "wall_s": ended - launched, "cells": cells, "stdout": proc.stdout.strip().splitlines()[-1:],
            "noop_s": noop_s}


def grid_table(grid: dict, jobs_one: bool) -> list[str]:
    cells = grid["cells"]
    lines = [f"  {'method / model / task':44}{'status':>12}{'wall':>8}{'load':>7}{'train':>8}{'eval':>7}{'rest':>7}"
             f"{'outside':>9}{'share':>7}"]
    for c in cells:
        lines.append(f"  {c['method'] + ' / ' + c['model'] + ' / ' + c['task']:44}{c['status']:>12}"
                     f"{c['wall_s']:8.1f}{c['load_s']:7.2f}{c['train_s']:8.2f}{c['eval_s']:7.2f}{c['rest_s']:7.2f}"
                     f"{c['outside_s']:9.2f}{100 * c['outside_s'] / c['wall_s']:6.1f}%")
    total = grid["wall_s"]
    train, ev, load = (sum(c[k] for c in cells) for k in ("train_s", "eval_s", "load_s"))
    last = cells[-1]["done_at"] if cells else 0.0
    outside = total - train - ev
    lines += [
        f"  {'all ' + str(len(cells)) + ' cells (process start to exit)':44}{'':>12}{total:8.1f}{load:7.2f}{train:8.2f}"
        f"{ev:7.2f}{total - load - train - ev:7.2f}{outside:9.2f}{100 * outside / total:6.1f}%",
        "  (wall: since the previous record was written, the first cell's since the process started; rest = wall"
        " - load - train - eval: process start, imports, probe, FLOPs, stored size, inference speed, loop bookkeeping,"
        " records;"
        f" the run's exit after its last record: {total - last:.1f} s)" if jobs_one else
        "  (cells ran concurrently: per-cell wall times are not separable; only the totals hold)",
    ]
    return lines


def run_worker(mode: str, args, work: Path, cell: dict, cache: Path, tag: str) -> dict:
    spec = {"suite": args.suite, "method": cell["method"], "model": cell["model"], "task": cell["task"],
            "threads": args.threads, "data_dir": args.data_dir}
    folder = work / "workers" / tag
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--spec", json.dumps(spec),
           "--out", str(out), "--source", str(SOURCE)]
    env = child_env(work, cache, args.preload)
    launched = time.time()
    env["GO_LAUNCH"] = repr(launched)
    proc = subprocess.run(cmd, cwd=SOURCE, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"{mode} worker failed ({shlex.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["process_s"] = time.time() - launched
    if result["record"]["status"] != "ok":
        print(f"  note: the profiled cell's status is {result['record']['status']}: {result['record']['error']}")
    return result


def phase_table(cold: dict, warm: dict) -> list[str]:
    lines = [f"  {'phase (wrapped function; indented: called inside the one above)':72}{'cold cache':>11}"
             f"{'warm cache':>11}{'share warm':>11}"]
    total_c, total_w = cold["run_cell_s"], warm["run_cell_s"]
    order = list(dict.fromkeys(label.strip() for label, _, _ in WRAPPED))
    keys = list(dict.fromkeys([*warm["phases"], *cold["phases"]]))
    top_c = top_w = 0.0
    for label in order:
        for key in [k for k in keys if k == label] + [k for k in keys if k.startswith(label + " > ")]:
            c, w = cold["phases"].get(key), warm["phases"].get(key)
            nested = " > " in key
            if not nested:
                top_c += c or 0.0
                top_w += w or 0.0
            shown = ("    " + key.split(" > ", 1)[1]) if nested else key
            lines.append(f"  {shown[:72]:72}{fmt(c, '11.3f')}{fmt(w, '11.3f')}{100 * (w or 0) / total_w:10.1f}%")
    lines.append(f"  {'other (record building, seeding, the recipe between phases)':72}{total_c - top_c:11.3f}"
                 f"{total_w - top_w:11.3f}{100 * (total_w - top_w) / total_w:10.1f}%")
    lines.append(f"  {'run_cell total':72}{total_c:11.3f}{total_w:11.3f}{100.0:10.1f}%")
    for run, name in ((cold, "cold"), (warm, "warm")):
        t = run["record"]["time"]
        window = run["phases"].get("training loop (recipe.train)", 0.0)
        outside = run["run_cell_s"] - t["train_s"] - t["eval_s"]
        run["outside_s"] = outside
        lines.append(f"  {name}: outside training (sum of steps) and evaluation: {outside:.2f} s of "
                     f"{run['run_cell_s']:.2f} s ({100 * outside / run['run_cell_s']:.1f} %); time.train_s "
                     f"{t['train_s']:.2f} s of a {window:.2f} s "
                     f"loop ({run['record']['train_steps']} steps, median {1e3 * t['step_s_median']:.1f} ms; between "
                     f"steps {window - t['train_s']:.2f} s); load_s {t['load_s']:.2f}, eval_s {t['eval_s']:.2f}")
    lines.append(f"  the fork server's imports (bench.run.warm), paid once per run: {cold['preload_s']:.2f} s cold, "
                 f"{warm['preload_s']:.2f} s warm (interpreter start to preloaded: "
                 f"{warm['started_to_preloaded_s']:.2f} s)")
    return lines


def fmt(value, spec: str) -> str:
    return f"{'n/a':>11}" if value is None else format(value, spec)


def profile_table(prof: dict, top: int) -> list[str]:
    total = prof["profiled_s"]
    skip = re.compile(r"grid_overhead\.py|cProfile|<built-in method builtins\.exec>|recipe\.py:\d+:run_cell$")
    rows = [r for r in prof["profile"] if not skip.search(r["where"])]
    ours = [r for r in rows if r["where"].startswith("bench/")]
    lines = [f"  run_cell {prof['run_cell_s']:.2f} s under cProfile, of which the training loop "
             f"{prof.get('train_window_s', 0):.2f} s (not profiled): {total:.2f} s profiled = 100 %",
             f"  the harness's functions (bench/), top {top} by cumulative time (own time plus callees'):",
             f"  {'file:line:function':80}{'calls':>8}{'cum s':>8}{'share':>7}"]
    for r in sorted(ours, key=lambda r: -r["cum_s"])[:top]:
        lines.append(f"  {r['where'][:80]:80}{r['calls']:8d}{r['cum_s']:8.3f}{100 * r['cum_s'] / total:6.1f}%")
    lines += [f"  every function, top {top} by own time (callees excluded):",
              f"  {'file:line:function':80}{'calls':>8}{'own s':>8}{'share':>7}"]
    for r in sorted(rows, key=lambda r: -r["own_s"])[:top]:
        lines.append(f"  {r['where'][:80]:80}{r['calls']:8d}{r['own_s']:8.3f}{100 * r['own_s'] / total:6.1f}%")
    return lines


def import_costs(work: Path, preload: str | None, n: int = 12) -> tuple[float, list[str]]:
    """Wall time of importing bench.run.warm in a fresh interpreter (as the grid's fork server does), and its
    heaviest top-level imports."""
    cmd = [sys.executable, "-X", "importtime", "-c", "import bench.run.warm"]
    launched = time.perf_counter()
    proc = subprocess.run(cmd, cwd=SOURCE, env=child_env(work, work / "cache-imports", preload), capture_output=True,
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
    p.add_argument("--worker", choices=["phases", "profile"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    SOURCE = args.source.resolve()
    sys.path.insert(0, str(SOURCE))
    if args.worker:
        worker(args.worker, json.loads(args.spec), args.out)
        return 0
    if args.skip_grid and not args.profile_cell:
        p.error("--skip-grid needs --profile-cell METHOD,MODEL,TASK")
    if args.data_dir:
        args.data_dir = str(Path(args.data_dir).resolve())
    if not Path(args.suite).suffix:  # a suite name: the measured source's suites/
        if not (SOURCE / "suites" / f"{args.suite}.yaml").is_file():
            p.error(f"no suite {args.suite!r} under {SOURCE / 'suites'}")
    else:
        args.suite = str(Path(args.suite).resolve())

    print_header("Grid overhead: the share of wall time outside training and evaluation", __file__, argv if argv is not None else sys.argv[1:], REPO, SOURCE)
    print(f"load average at start: {loadavg()}\n", flush=True)
    summary: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="grid-overhead-") as tmp:
        work = Path(tmp)
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
        cold = run_worker("phases", args, work, cell, work / "cache-cold", "cold")
        warm = run_worker("phases", args, work, cell, work / "cache-cold", "warm")  # the cold run filled it
        prof = run_worker("profile", args, work, cell, work / "cache-cold", "profile")
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
        if args.keep:
            import shutil

            kept = Path(tempfile.mkdtemp(prefix="grid-overhead-kept-"))
            shutil.copytree(work, kept, dirs_exist_ok=True)
            print(f"kept: {kept}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
