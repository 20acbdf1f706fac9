"""The fork server's preload (bench.run.warm) never leaves CUDA initialised, whatever its imports do."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *paths: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_the_preload_leaves_cuda_uninitialised_with_bitsandbytes_installed():
    assert importlib.util.find_spec("bitsandbytes") is not None, "the locked environment installs bitsandbytes"
    got = python("import json, sys, torch, bench.run.warm as w\n"
                 "print(json.dumps({'cuda': torch.cuda.is_initialized(), 'skipped': w.SKIPPED,"
                 " 'loaded': sorted(m for m in w.MODULES if m in sys.modules)}))")
    assert got["cuda"] is False
    touching = {m for m, why in got["skipped"].items() if "touches CUDA" in why}
    assert not touching & set(got["loaded"])  # what touched CUDA is left for the cell to import
    assert "bench.cell.recipe" in got["loaded"] and "transformers.models.llama.modeling_llama" in got["loaded"]


def test_a_module_that_touches_cuda_on_import_is_unloaded(tmp_path):
    (tmp_path / "touchy_dep.py").write_text("VALUE = 1\n")
    (tmp_path / "touchy.py").write_text("import torch, touchy_dep\ntorch.cuda._lazy_init()\n")
    # a library that catches the failure and caches "no CUDA" must not stay loaded either
    (tmp_path / "swallower.py").write_text("import torch\ntry:\n    torch.cuda.init()\nexcept Exception:\n"
                                           "    pass\nCUDA = False\n")
    (tmp_path / "calm.py").write_text("import torch\nX = torch.zeros(2)\n")
    got = python("import json, sys, torch\nfrom bench.run.warm import preload\n"
                 "skipped = preload(['touchy', 'swallower', 'calm', 'not_installed_anywhere'])\n"
                 "print(json.dumps({'skipped': skipped, 'cuda': torch.cuda.is_initialized(),"
                 " 'modules': [m for m in ('touchy', 'touchy_dep', 'swallower', 'calm') if m in sys.modules],"
                 " 'lazy_init_restored': torch.cuda._lazy_init.__module__ == 'torch.cuda'}))", tmp_path)
    assert got["cuda"] is False and got["modules"] == ["calm"] and got["lazy_init_restored"]
    assert "touches CUDA" in got["skipped"]["touchy"] and "touches CUDA" in got["skipped"]["swallower"]
    assert got["skipped"]["not_installed_anywhere"].startswith("not installed")
    assert "calm" not in got["skipped"]
