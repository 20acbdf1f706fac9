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
