"""Grid overhead (benchmarks/grid_overhead.py): its one-cell worker, a child process that runs one cell as the
executor does, its phases timed by wrappers or the cell profiled. A worker is `python benchmarks/grid_overhead.py
--worker MODE`, which calls `worker` here."""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.common import REPO, short_path, since_launch, write_json

SMOKE = False  # a helper module of grid_overhead.py (tests/test_benchmarks.py)


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
    from bench.files import atomic_write

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


def worker(mode: str, spec: dict, out: Path, source: Path) -> None:
    result = {"mode": mode}
    start = time.perf_counter()
    import bench.run.warm  # noqa: F401  what the fork server imports before any cell (once per run)
    result["preload_s"] = time.perf_counter() - start
    result["started_to_preloaded_s"] = since_launch()
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
            rows.append({"where": f"{short_path(filename, REPO, source)}:{line}:{name}", "calls": nc, "own_s": tt,
                         "cum_s": ct})
        result["profile"] = rows
        result["profiled_s"] = result["run_cell_s"] - result.get("train_window_s", 0.0)
    result["record"] = {"status": record["status"], "error": record["error"], "time": record["time"],
                        "train_steps": record["train"].get("steps")}
    write_json(out, result)
