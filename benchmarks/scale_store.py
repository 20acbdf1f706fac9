"""Scale benchmark (benchmarks/scale.py): its synthetic store (a suite of N cells, each given a copy of one real
record), the child processes it times, and the checks of what each timed command did."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import REPO, write_suite

SMOKE = False  # a helper module of scale.py (tests/test_benchmarks.py)
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


def cli() -> list[str]:
    """The console script a user runs, beside this interpreter (else `python -m bench`)."""
    script = Path(sys.executable).parent / "peft-bench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bench"]



def template_record(tmp: Path, env: dict, given: str | None, source: Path, smoke: bool = False) -> dict:
    """An ok record of a real tiny cell: trained now (one smoke cell; with `smoke`, 2 steps of it), or read from
    `given`."""
    if given:
        record, origin = json.loads(Path(given).read_text()), given
    else:
        store = tmp / "template-results"
        suite = next(folder / "suites" / "smoke.yaml" for folder in (source, REPO)
                     if (folder / "suites" / "smoke.yaml").is_file())
        if smoke:
            suite = write_suite(tmp / "template-suite", "smoke", methods=["lora"], models=["tiny-gpt2"],
                                tasks=["synth-polarity"], seeds=[1],
                                train={"batch_size": 16, "max_steps": 2, "max_length": 32, "max_eval_samples": 16})
        cell = ["--suite", str(suite), *TEMPLATE_CELL]
        print(f"training one real cell for the template record: peft-bench run {' '.join(cell)} --quiet", flush=True)
        child = run_child(cli() + ["run", *cell, "--results", store, "--quiet"], env, tmp).check("template cell")
        found = sorted(store.glob("*/*.json"))
        if len(found) != 1:
            raise SystemExit(f"expected one record under {store}, found {len(found)}")
        record, origin = json.loads(found[0].read_text()), f"{found[0]} ({child.wall:.0f} s)"
    if record.get("status") != "ok":
        raise SystemExit(f"the template record is not ok ({record.get('status')}): {origin}")
    print(f"template record: {origin}", flush=True)
    return record


def scale_suite(tmp: Path, n: int) -> tuple[Path, int]:
    """The suite of the synthetic grid: every method, model and task above, and as many seeds as make `n` cells."""
    seeds = max(1, math.ceil(n / GROUPS))
    if seeds > 1000:
        raise SystemExit(f"--records {n} needs {seeds} seeds; a suite allows 1000 (bench/plan/suite.py MAX_SEEDS)")
    path = write_suite(tmp, SUITE_NAME, description="synthetic scale benchmark (benchmarks/scale.py); its records are "
                       "copies of one real cell", methods=METHODS, models=MODELS, tasks=TASKS,
                       seeds=list(range(1, seeds + 1)), train={"batch_size": 32, "max_steps": 300, "max_length": 64},
                       exclude=EXCLUDE)
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
