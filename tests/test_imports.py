"""Planning, reporting and the store never import torch, transformers or peft: importing torch alone takes
seconds, more than the whole budget of a grid expansion or a no-op run (docs/performance.md, Scale).
Method declarations are torch-free; their torch code lives in bench/layers and is imported by `build`."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "peft")

# In a fresh interpreter: record who first imports a heavy module (the bench frames on the stack), import
# what the planning and reporting commands import, and expand the smoke suite (every method resolves).
CHILD = """
import importlib, importlib.abc, json, sys, traceback
HEAVY = %r
first = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in HEAVY and name not in first:
            first[name] = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack() if "/bench/" in f.filename]
        return None
sys.meta_path.insert(0, Watch())
for module in %r:
    importlib.import_module(module)
from bench import methods
from bench.plan import grid, suite
cells = grid.expand(suite.load_suite("smoke"))
print(json.dumps({"first": first, "cells": len(cells), "methods": len(methods.REGISTRY)}))
"""
MODULES = ["bench.cli", "bench.methods", "bench.plan.grid", "bench.plan.suite", "bench.run.store", "bench.run.runner",
           "bench.run.executors", "bench.report", "bench.report.build", "bench.report.compare", "bench.report.page",
           "bench.tools.regress"]


def test_planning_and_reporting_import_no_torch():
    out = subprocess.run([sys.executable, "-c", CHILD % (HEAVY, MODULES)], capture_output=True, text=True,
                         check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["first"] == {}, f"imported on the planning/reporting path (import chain): {result['first']}"
    assert result["cells"] > 0 and result["methods"] >= 25


def test_the_watch_sees_a_heavy_import():
    """The check above can fail: the same child, asked to import a module that needs torch, reports it."""
    out = subprocess.run([sys.executable, "-c", CHILD % (HEAVY, MODULES + ["bench.layers.bottleneck"])],
                         capture_output=True, text=True, check=True).stdout
    first = json.loads(out.strip().splitlines()[-1])["first"]
    assert "torch" in first and any("bench/layers/bottleneck.py" in frame for frame in first["torch"])


# A planning command in a fresh interpreter, then the heavy modules it imported (a module kept out is None there).
COMMAND = """
import json, sys
sys.path.insert(0, %r)
from bench.cli import main
code = main(%r)
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "loaded": [m for m in %r if sys.modules.get(m) is not None]}))
"""
COMPILER_AND_FRIENDS = ("torch", "transformers", "peft", "bitsandbytes", "torch._dynamo", "torch._inductor")


def _loaded_by(args: list[str], env=None, code: int = 0) -> list[str]:
    import os
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", COMMAND % (tests, args, COMPILER_AND_FRIENDS)], capture_output=True,
                         text=True, env={**os.environ, **(env or {})})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == code, out.stderr
    return result["loaded"]


def test_no_planning_command_imports_torch_peft_or_the_compiler(tmp_path):
    """list, report, compare, results export and a dry-run whose prices are cached import none of torch,
    transformers, peft, bitsandbytes or torch's compiler: they answer at once. A few-shot suite's dry-run too: the
    prompt lengths it is priced at (measured with the model's tokenizer, from transformers) are cached with the
    prices."""
    from handmade import survey_records, write_store

    store = write_store(tmp_path / "r", survey_records())
    cache = {"PEFT_BENCH_CACHE": str(tmp_path / "cache")}
    suite, few_shot = tmp_path / "plan.yaml", tmp_path / "few-shot.yaml"
    suite.write_text("name: plan\nmethods: [lora, bitfit]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                     "train: {max_steps: 10, batch_size: 4, max_length: 16}\n")
    few_shot.write_text("name: few-shot\nmethods: [lora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                        "train: {max_steps: 10, batch_size: 4, max_length: 64, shots: 8}\n")
    dry_run, few_shot_dry_run = (["run", "--suite", str(path), "--dry-run", "--results", str(tmp_path / "plan")]
                                 for path in (suite, few_shot))
    first = _loaded_by(dry_run, cache)  # prices the shapes: builds and counts, as it must
    assert "peft" in first and "bitsandbytes" not in first  # LoRA needs peft; nothing here needs bitsandbytes
    assert "transformers" in _loaded_by(few_shot_dry_run, cache)  # measures the prompts with the tokenizer
    for args in (["list", "methods"], ["list", "models"], ["list", "tasks"], ["list", "suites"],
                 ["report", "--suite", "hand", "--results", str(store), "--out", str(tmp_path / "rep"),
                  "--format", "md,csv"],
                 ["compare", str(store), str(store)],
                 ["results", "export", "--suite", "hand", "--results", str(store), "--out", str(tmp_path / "x.csv")],
                 dry_run, few_shot_dry_run):
        assert _loaded_by(args, cache) == [], args


def test_a_dry_run_on_gpus_refuses_from_cached_predictions_without_torch(tmp_path):
    """`run --dry-run --gpus` asks each cell's predicted memory, as the run does, to say which cells fit no GPU: from
    the cache once predicted, so without torch. Two fake GPUs (CUDA_VISIBLE_DEVICES, and an nvidia-smi on PATH
    whose 1,024 MiB free are all a cell's CUDA context, so every cell is refused: exit 2)."""
    import os

    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho '1024, 0'\n")  # memory.total, memory.used (MiB), whichever GPU is asked
    smi.chmod(0o755)
    suite = tmp_path / "plan.yaml"
    suite.write_text("name: plan\nmethods: [lora, bitfit]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                     "train: {max_steps: 10, batch_size: 4, max_length: 16, precision: fp32}\n")  # bounds the peak
    env = {"PEFT_BENCH_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": "0,1",
           "PATH": f"{smi.parent}{os.pathsep}{os.environ['PATH']}"}
    dry_run = ["run", "--suite", str(suite), "--dry-run", "--gpus", "0,1", "--results", str(tmp_path / "r")]
    assert "torch" in _loaded_by(dry_run, env, code=2)  # predicts the cells' memory: builds and counts
    assert _loaded_by(dry_run, env, code=2) == []


def test_estimate_keeps_bitsandbytes_out_unless_the_method_needs_it():
    """peft imports bitsandbytes whenever it is installed (about a second); estimate keeps it out for a method
    that does not quantise. QLoRA declares it (Method.packages), so its estimate may import it."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        import pytest

        pytest.skip("bitsandbytes is not installed (the `gpu` extra)")
    assert "bitsandbytes" not in _loaded_by(["estimate", "--model", "tiny-gpt2", "--method", "lora",
                                             "--batch-size", "1", "--seq-len", "8"])
    from bench.methods import REGISTRY
    from bench.methods.base import OPTIONAL_PACKAGES

    assert REGISTRY["qlora"].packages == ("bitsandbytes",)
    assert all(set(m.packages) <= set(OPTIONAL_PACKAGES) for m in REGISTRY.values())
