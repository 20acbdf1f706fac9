"""The recipe reads top to bottom: one cell's call trace (benchmarks/cell_trace.py) visits each harness
module in one contiguous stretch per phase."""

import importlib.util
from pathlib import Path

from bench.plan import grid
from bench.plan.suite import load_suite

TRACE = Path(__file__).resolve().parents[1] / "benchmarks" / "cell_trace.py"


def _cell_trace():
    spec = importlib.util.spec_from_file_location("cell_trace", TRACE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_returns_count_a_callers_second_stretch_in_a_module():
    """The measure is right on a hand-made trace: a caller's calls into one module in a row are one stretch;
    calls nested inside a module do not break it; coming back after another module is a return."""
    returns = _cell_trace().returns
    entries = [("setup", "recipe", "data", "load"), ("setup", "data", "synthetic", "make"),
               ("setup", "recipe", "data", "subsample"), ("setup", "recipe", "cache", "cached"),
               ("train", "recipe", "data", "load")]
    assert returns(entries) == {}
    assert returns(entries + [("setup", "recipe", "data", "fingerprint")]) == {("setup", "data"): 1}


def test_a_cell_reads_each_module_in_one_stretch_per_phase(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path))  # tokenising too, not only a cache hit
    trace = _cell_trace()
    cell = next(c for c in grid.expand(load_suite("ci")) if c.method == "lora" and c.model.name == "tiny-encoder")
    entries = trace.trace(cell)
    phases = {phase for phase, *_ in entries}
    assert {"setup", "train", "evaluate", "measure loaded", "measure before_training", "measure trained",
            "measure evaluated"} <= phases
    # the only modules visited twice: the record, which the recipe's own lines open first and finish last, and the
    # batching the probe reads twice before training (the evaluation's probe must run before the step probe, which
    # then warms up what training runs with, and reads the evaluation's peak: instruments.standard)
    assert trace.returns(entries) == {("run", "bench.record"): 1, ("measure before_training", "bench.cell.batching"): 1}
