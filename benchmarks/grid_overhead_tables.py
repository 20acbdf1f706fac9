"""Grid overhead (benchmarks/grid_overhead.py): its tables."""

from __future__ import annotations

import re

from benchmarks.common import or_na
from benchmarks.grid_overhead_cell import WRAPPED

SMOKE = False  # a helper module of grid_overhead.py (tests/test_benchmarks.py)


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
            lines.append(f"  {shown[:72]:72}{or_na(c, '11.3f')}{or_na(w, '11.3f')}{100 * (w or 0) / total_w:10.1f}%")
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
