"""The fork server's preload (bench.run.warm) never leaves CUDA initialised, whatever its imports do."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from packaging.version import Version

from bench import env
from bench.run.executors.cells import PRELOAD_ENV

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *paths: Path, **environ: str) -> dict:
    # after the checkout, the path this process was given: a run from the source keeps its other packages
    path = [str(ROOT), *map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), **environ}
    if PRELOAD_ENV not in environ:
        env.pop(PRELOAD_ENV, None)  # the default preload, whatever this process was given
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def needs_bitsandbytes() -> None:
    """The locked environment installs bitsandbytes; another (a GPU image running the source) may not: skip."""
    if importlib.util.find_spec("bitsandbytes") is None:
        assert env.lock_state()["status"] != "locked", "the locked environment installs bitsandbytes"
        pytest.skip("bitsandbytes is not installed, in an environment that is not the lock")


def test_the_preload_leaves_cuda_uninitialised_with_bitsandbytes_installed():
    needs_bitsandbytes()
    got = python("import json, re, sys, torch, bench.run.warm as w\n"
                 "askers = re.findall(r' from ([\\w.]+)', ' '.join(w.SKIPPED.values()))\n"
                 "print(json.dumps({'cuda': torch.cuda.is_initialized(), 'skipped': w.SKIPPED,"
                 " 'askers_loaded': [m for m in askers if m in sys.modules],"
                 " 'loaded': sorted(m for m in w.MODULES if m in sys.modules)}))")
    assert got["cuda"] is False
    # the module that asked for CUDA is left for the cell to import (on a CUDA build: bitsandbytes, imported by
    # peft, which the server then leaves whole to the cells)
    assert got["askers_loaded"] == []
    assert "bench.cell.recipe" in got["loaded"] and "transformers.models.llama.modeling_llama" in got["loaded"]


def test_the_preload_is_frozen_so_the_cells_collections_skip_it():
    """Objects the imports left are in the collector's permanent generation, which forked cells inherit: a
    cell's full collection (the probe runs one) walks only what the cell made."""
    got = python("import gc, json, bench.run.warm\n"
                 "print(json.dumps({'frozen': gc.get_freeze_count(), 'tracked': len(gc.get_objects())}))")
    assert got["frozen"] > 100_000 and got["tracked"] < got["frozen"] / 100


def test_a_module_that_touches_cuda_on_import_is_unloaded(tmp_path):
    (tmp_path / "touchy_dep.py").write_text("VALUE = 1\n")
    (tmp_path / "touchy.py").write_text("import torch, touchy_dep\ntorch.cuda._lazy_init()\n")
    # a library that catches the failure and caches "no CUDA" must not stay loaded either, nor the module whose
    # function asked for it on its behalf (it may cache the answer)
    (tmp_path / "asker.py").write_text("import torch\ndef ask():\n    torch.cuda.init()\n")
    (tmp_path / "swallower.py").write_text("import asker\ntry:\n    asker.ask()\nexcept Exception:\n"
                                           "    pass\nCUDA = False\n")
    (tmp_path / "calm.py").write_text("import torch\nX = torch.zeros(2)\n")
    got = python("import json, sys, torch\nfrom bench.run.preload import preload\n"
                 "skipped = preload(['touchy', 'swallower', 'calm', 'not_installed_anywhere'])\n"
                 "print(json.dumps({'skipped': skipped, 'cuda': torch.cuda.is_initialized(),"
                 " 'modules': [m for m in ('touchy', 'touchy_dep', 'swallower', 'asker', 'calm') if m in sys.modules],"
                 " 'lazy_init_restored': torch.cuda._lazy_init.__module__ == 'torch.cuda'}))", tmp_path)
    # touchy_dep never saw the refusal: it stays (a module registering torch operators cannot be imported twice)
    assert got["cuda"] is False and got["modules"] == ["touchy_dep", "calm"] and got["lazy_init_restored"]
    assert "touches CUDA" in got["skipped"]["touchy"] and "touches CUDA" in got["skipped"]["swallower"]
    assert got["skipped"]["not_installed_anywhere"].startswith("not installed")
    assert "calm" not in got["skipped"]


def test_a_library_that_registers_operators_before_touching_cuda_imports_again_in_the_cell(tmp_path):
    """bitsandbytes defines its torch operators (torch.library) and then asks whether CUDA is available. Unloading
    every module its import brought in made the cell's import define them a second time, which torch refuses."""
    package = tmp_path / "opsy"
    package.mkdir()
    (package / "__init__.py").write_text("from . import _ops, backend\n")
    (package / "_ops.py").write_text("import torch\n"
                                     "torch.library.define('opsy_test::double', '(Tensor x) -> Tensor')\n")
    # refused in the server (CudaTouched: the import fails, as bitsandbytes' does); in the cell, CUDA, or on a
    # machine without it torch's own error, which the library takes as "no CUDA"
    (package / "backend.py").write_text("import torch\ntry:\n    torch.cuda._lazy_init()\n"
                                        "except Exception as e:  # a CPU build, or no driver\n"
                                        "    if type(e).__name__ == 'CudaTouched':\n        raise\n")
    got = python("import json, sys\nfrom bench.run.preload import preload\n"
                 "skipped = preload(['opsy'])\n"
                 "import opsy\n"  # what a cell forked from the server does
                 "print(json.dumps({'skipped': skipped, 'cell': sorted(m for m in sys.modules if 'opsy' in m)}))",
                 tmp_path)
    assert "touches CUDA" in got["skipped"]["opsy"]
    assert got["cell"] == ["opsy", "opsy._ops", "opsy.backend"]


def test_on_a_cuda_build_the_preload_leaves_peft_for_the_cells_which_import_it_with_bitsandbytes(tmp_path):
    """On a CUDA build bitsandbytes asks for the device while it is imported: where peft imports it with its tuners
    (0.21), the server must leave peft for the cells; where it does not (0.22), the server keeps peft and no
    bitsandbytes; and the cells' import must work after that (CPU machines have no CUDA entry points, so they are
    faked here, as a CUDA build without a visible device has them)."""
    needs_bitsandbytes()
    (tmp_path / "sitecustomize.py").write_text(  # the device count 0, other CUDA bindings present but failing
        "import torch\nif not hasattr(torch._C, '_cuda_getDeviceCount'):\n"
        "    torch._C._cuda_getDeviceCount = lambda: 0\n    torch._C._cuda_init = lambda: None\n"
        "    def missing(name):\n        if not name.startswith(('_cuda', '_Cuda', '_nccl', '_cudnn', '_gds')):\n"
        "            raise AttributeError(name)\n"
        "        def binding(*args, **kwargs):\n            raise RuntimeError(f'no CUDA device: {name}')\n"
        "        return binding\n    torch._C.__getattr__ = missing\n")
    got = python("import json, sys, torch, bench.run.warm as w\n"
                 "server = {'cuda': torch.cuda.is_initialized(), 'skipped': w.SKIPPED,"
                 " 'peft': [m for m in sys.modules if m.split('.')[0] in ('peft', 'bitsandbytes')]}\n"
                 "import peft, bitsandbytes\nfrom peft import LoraConfig\n"  # a cell
                 "print(json.dumps({**server, 'cell': [hasattr(bitsandbytes, 'nn'), hasattr(peft.tuners, 'lora'),"
                 " hasattr(peft.utils, 'other')]}))", tmp_path)
    assert got["cuda"] is False and got["cell"] == [True, True, True]
    if "peft.tuners" in got["skipped"]:  # peft 0.21 imports bitsandbytes with its tuners, which asks for the device
        assert "touches CUDA" in got["skipped"]["peft.tuners"]
        assert got["peft"] == []  # none of it, not half of it: a re-imported package would miss what stayed behind
    else:  # peft 0.22 imports bitsandbytes only where it builds a quantized layer: the server may keep peft, not it
        assert "peft.tuners" in got["peft"] and not [m for m in got["peft"] if m.split(".")[0] == "bitsandbytes"]


def test_on_a_cuda_build_what_asks_in_the_throwaway_process_is_never_imported_and_a_failed_probe_falls_back(
        tmp_path):
    (tmp_path / "touchy_lib.py").write_text("import torch\ntorch.cuda._lazy_init()\n")
    (tmp_path / "calm_lib.py").write_text("X = 1\n")
    got = python("import json, sys\nfrom bench.run import preload as p\n"
                 "p.cuda_build = lambda: True\n"
                 "asked = p.asking_in_a_child(('calm_lib', 'touchy_lib'))\n"  # a real child process
                 "server = p.preload_for_server(('calm_lib', 'touchy_lib'))\n"
                 "loaded = [m for m in ('calm_lib', 'touchy_lib') if m in sys.modules]\n"
                 "p.asking_in_a_child = lambda modules: None\n"  # the child failed: find out here
                 "fallback = p.preload_for_server(('touchy_lib',))\n"
                 "print(json.dumps({'asked': asked, 'server': server, 'loaded': loaded, 'fallback': fallback}))",
                 tmp_path)
    assert list(got["asked"]) == ["touchy_lib"] and "touches CUDA" in got["asked"]["touchy_lib"]
    assert got["server"] == got["asked"] and got["loaded"] == ["calm_lib"]
    assert "touches CUDA" in got["fallback"]["touchy_lib"]


def test_the_preload_is_the_grids_own_when_the_executor_names_it():
    """Unnamed, the preload imports every architecture and metric library; named (as the executor does), only
    the core and the named modules: a grid without ROUGE never imports nltk, nor scikit-learn through it
    (transformers before 5.21 imports scikit-learn itself, wherever it is installed)."""
    from bench.run.executors import cells

    code = ("import json, sys, bench.run.warm as w\n"
            "print(json.dumps({'modules': w.MODULES, 'core': w.CORE, 'loaded': [m for m in ('sklearn', 'nltk',"
            " 'rouge_score', 'transformers.models.llama.modeling_llama', 'transformers.models.t5.modeling_t5')"
            " if m in sys.modules]}))")
    every = python(code)
    assert "rouge_score.rouge_scorer" in every["modules"] and "sacrebleu" in every["modules"]
    assert "transformers.models.llama.modeling_llama" in every["loaded"] and "rouge_score" in every["loaded"]
    core = python(code, **{PRELOAD_ENV: ""})
    assert core["modules"] == core["core"]
    assert not {"nltk", "rouge_score"} & set(core["loaded"])
    # before 5.21, transformers' generation (which a model's module imports) imports sklearn itself, where installed
    sklearn_of_transformers = {"sklearn"} if Version(transformers.__version__) < Version("5.21") else set()
    assert "sklearn" not in set(core["loaded"]) - sklearn_of_transformers
    named = python(code, **{PRELOAD_ENV: "transformers.models.t5.modeling_t5"})
    assert named["modules"] == [*named["core"], "transformers.models.t5.modeling_t5"]
    named_only = set(named["loaded"]) - set(core["loaded"]) - sklearn_of_transformers
    assert named_only == {"transformers.models.t5.modeling_t5"}
    assert cells.PRELOAD == ["bench.run.warm"]  # the fork server's only preload: the guarded imports


def test_grid_modules_are_the_cells_architectures_and_metric_libraries():
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.run.executors.cells import grid_modules

    smoke = grid.expand(load_suite("smoke"))
    # MiniLM-L6 and the tiny GPT-2 (its forgetting cells); accuracy needs no library
    assert grid_modules(smoke) == ["transformers.models.bert.modeling_bert", "transformers.models.gpt2.modeling_gpt2"]
    ci = grid.expand(load_suite("ci"))
    assert grid_modules(ci) == sorted({"transformers.models.roberta.modeling_roberta",
                                       "transformers.models.t5.modeling_t5", "transformers.models.gpt2.modeling_gpt2"})
    nlg = grid.expand(load_suite("nlg"))
    assert {"rouge_score.rouge_scorer", "sacrebleu"} <= set(grid_modules(nlg))


def test_the_executor_names_the_grids_modules_while_it_starts_cells_and_restores_the_environment(monkeypatch):
    """The fork server starts with the first cell process and reads PRELOAD_ENV then; the cells are taken one by
    one (the runner claims each as it is taken), the plan says what they need; afterwards the runner's
    environment is as it was (set or unset)."""
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.run.executors import local as executors

    seen = []

    class Started:  # a cell process that has already finished
        def __init__(self, cell, spool, quiet, device=None, show=True, budget=None):
            seen.append(os.environ.get(PRELOAD_ENV))
            self.cell, self.device = cell, device
            self.read, write = os.pipe()
            os.close(write)  # readable at once: the process has ended

        @property
        def sentinel(self):
            return self.read

        def poll(self):
            os.close(self.read)
            return {"env": {}}

    monkeypatch.setattr(executors, "CellProcess", Started)
    cells = grid.expand(load_suite("smoke"))[:3]
    for before in (None, "x,y"):
        monkeypatch.delenv(PRELOAD_ENV, raising=False) if before is None else monkeypatch.setenv(PRELOAD_ENV, before)
        seen.clear()
        done = list(executors.LocalExecutor().submit(iter(cells), lambda cell: None, cells))
        assert len(done) == 3 and seen == [",".join(executors.grid_modules(cells))] * 3
        assert os.environ.get(PRELOAD_ENV) == before
        seen.clear()  # no plan given: everything is preloaded, as before
        list(executors.LocalExecutor().submit(cells, lambda cell: None))
        assert seen == [before] * 3 and os.environ.get(PRELOAD_ENV) == before
