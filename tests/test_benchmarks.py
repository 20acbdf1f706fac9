"""Every benchmark script runs: each `benchmarks/*.py` is run with `--smoke` (its whole path at the smallest size) in
a process of its own, as docs/performance.md runs it, and must exit 0 and print its result table. A module of
benchmarks/ is a script unless it says `SMOKE = False` at top level (a helper, which must then not be runnable), so a
new script fails here until it takes --smoke and OUTPUT names what its smoke prints."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

# What each script's smoke output must hold: its result table or lines (regular expressions, each searched).
OUTPUT = {
    "cell_trace": [r"lora · tiny-encoder · synth-polarity: \d+ entries into \d+ modules, \d+ returns"],
    "estimate_vs_gpu": [r"\| encoder \| fp32 \| head-only \| 660 \| 912 \| 660 \| 726 \| 1\.0002 \| 0\.909 \|"],
    "eval_order": [r"positions in order +sorted +ratio", r"synth-polarity +500 +32 +[\d,]+ +[\d,]+ +0\.\d\d .* yes"],
    "gpu_check": [r"\| gpu-check-encoder \| fp32 \| lora \| ok \| \d+ \| \d+ \|",
                  r"\| gpu-check-decoder \| bf16 \| lora \| ok \| \d+ \| \d+ \|",
                  r"\| gpu-check-seq2seq \| fp32 \| full \| ok \| \d+ \| \d+ \|.* \| \d+ \| \d\.\d{4} \|\n",
                  r"memory prediction: no cell measured on a device"],
    "gpu_memory_trace": [r"tracing full \(gpu-check-smoke, predicted/measured 0\.70\)",
                         r"## gpu-check-smoke-full\.pkl\.xz: full on decoder \(ok\)\nevents 5; opening 40\.000 MiB; "
                         r"replayed peak 90\.000 MiB \(event 1\); the allocator's requested peak 90\.000",
                         r"30\.0 MiB +1 blocks +forward \(modeling_llama\.py:7\)"],
    "gpu_packing": [r"\| packed \| 2 \| 2 \| [\d.]+ \| \d+ \| 1 \|",
                    r"\| one at a time \| 2 \| 2 \| [\d.]+ \| \d+ \| 0 \|",
                    r"packed / one at a time: [\d.]+ x the cells per hour",
                    r"\| lora \| 1 \| ok \| \d+ \| \d+ \| – \| – \| – \| – \| 1 \|"],
    "gpu_perf": [r"\| method \| weights \| tokens/step \| harness step ms.* \| peak GiB, estimate \| peak GiB, cell "
                 r"probe \| peak GiB, measured \| measured / estimate \|",
                 r"\| lora \| bf16 \| 128 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|[^\n]* \| [\d.]+ \| [\d.]+ \| – \| – \|\n"],
    "grid_overhead": [r"1\. The grid: 1 cells, [\d.]+ s wall", r"=> outside training and evaluation: [\d.]+ s of",
                      r"run_cell total +[\d.]+ +[\d.]+ +100\.0%", r"under cProfile, the training loop not profiled"],
    "harness_overhead": [r"tiny-encoder / lora: task synth-polarity, 4 steps",
                         r"in one process, ABBA blocks \(ms\) +[\d.]+ +[\d.]+",
                         r"goals: step a/b in one process [\d.]+ (<=|>) 1\.03",
                         r"The loops alone \(a near-free model on the tiny cell's batches, 1 ABBA rounds of 10 steps",
                         r"tiny-encoder / lora +[\d.]+ +[\d.]+ +(met|MISSED)"],
    "latency": [r"\| `list methods` \| [\d.]+ \| [\d.]+ \|", r"`python -c \"import torch\"`: median [\d.]+ s"],
    "scale": [r"400 synthetic ok records written and read back",
              r"\| report over 400 records, tables only .* \| [\d.]+ s \|",
              r"\| no-op run over 400 recorded cells, cold .* \| [\d.]+ s \|",
              r"\| grid expansion of 400 cells \| ≤ 2 s \| [\d.]+ s \|"],
}


def is_helper(path: Path) -> bool:
    """A module that says `SMOKE = False` at top level."""
    return any(isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["SMOKE"]
               and getattr(node.value, "value", None) is False for node in ast.parse(path.read_text()).body)


SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.name != "__init__.py" and not is_helper(p))
HELPERS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "__init__.py" and is_helper(p))


def test_every_script_says_what_its_smoke_prints():
    assert SCRIPTS == sorted(OUTPUT), "a benchmark script without OUTPUT here, or OUTPUT for no script"


@pytest.mark.parametrize("helper", HELPERS, ids=lambda p: p.stem)
def test_a_helper_is_not_a_script(helper):
    assert "__main__" not in helper.read_text(), f"{helper.name} runs as a script: give it --smoke, not SMOKE = False"


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script, tmp_path):
    """The script's --smoke, from the repository root as the docs run it; everything it writes goes to tmp_path."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path), "PEFT_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for pattern in OUTPUT[script]:
        assert re.search(pattern, done.stdout), f"no {pattern!r} in:\n{done.stdout[-4000:]}"


def test_gpu_check_marks_an_estimate_that_is_an_upper_bound(tmp_path):
    """A Fisher-masked cell's estimate is an upper bound of its peak (`memory.upper_bound`): its ratio to the probe's
    prediction says so, where before it read as a prediction that missed."""
    import json

    from benchmarks.gpu_check import table

    (tmp_path / "s").mkdir()
    for label in ("lora", "fishmask"):
        record = {"cell": {"label": label}, "status": "ok", "train": {"weights_dtype": "fp32"}, "time": {},
                  "memory": {"predicted_peak_bytes": 100 * 2**20, "device_peak_allocated_bytes": 100 * 2**20}}
        (tmp_path / "s" / f"{label}.json").write_text(json.dumps(record))
    text = table(tmp_path, [("s", ["lora", "fishmask"])],
                 {("s", "lora"): (100 * 2**20, False), ("s", "fishmask"): (150 * 2**20, True)})
    assert "| 150 | 1.5000 (upper bound) |" in text and "| 100 | 1.0000 |" in text
