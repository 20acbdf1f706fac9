"""Imported once by the executor's fork server, so every cell process starts warm.

Importing torch, transformers' model code, peft and the metric libraries costs seconds; a forked
child inherits them for free. Only imports and pure caches belong here: nothing may start threads
or touch CUDA before the fork. A child of a process that initialised CUDA cannot use CUDA at all
("Cannot re-initialize CUDA in forked subprocess"), and some libraries touch it on import
(bitsandbytes, which peft imports when it is installed, asks for the device's capability). So each
module is imported with CUDA forbidden: one that reaches for CUDA is unloaded again and left for
the cell to import itself, on a machine where that is fine. What it imported on the way, without
asking for CUDA, stays: torch operators registered by a module's import (bitsandbytes', torch's own
distributed ones) cannot be registered twice, so such a module must never be imported again.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pkgutil
import sys

import torch

from bench import layers
from bench.archs import ARCHS
from bench.run.executors import PRELOAD_ENV
from bench.tasks.metrics import METRICS

# torch's entry points that initialise CUDA or mark a process unable to fork with it: the lazy
# initialiser, and the device count, which CUDA builds compute by initialising the driver.
_CUDA_ENTRY_POINTS = ("_cuda_init", "_cuda_getDeviceCount")
CORE = (
    "bench.cell.recipe",  # torch, transformers, the harness
    *(f"bench.layers.{m.name}" for m in pkgutil.iter_modules(layers.__path__)),  # the in-house methods' modules
    "peft.tuners", "safetensors.torch",
)
# Besides CORE, each architecture's model code and each metric's library. The executor names the ones its
# cells use (bench.run.executors.grid_modules), so a grid does not pay for the rest (ROUGE's nltk alone
# brings scikit-learn, about a second); without that list, every one.
EVERY = (*CORE, *(arch.modeling for arch in ARCHS.values()),
         *sorted({m.library for m in METRICS.values() if m.library}))


def modules_to_preload(environ=os.environ) -> tuple[str, ...]:
    named = environ.get(PRELOAD_ENV)
    return EVERY if named is None else (*CORE, *filter(None, named.split(",")))


class CudaTouched(RuntimeError):
    """An import asked for CUDA while the fork server was preloading."""


@contextlib.contextmanager
def cuda_forbidden(touched: list[str], callers: set[str] | None = None):
    """Within: every CUDA entry point raises CudaTouched and is logged in `touched` with the module that
    called it (even when the importing library catches the exception and carries on with CUDA marked
    unavailable), and the modules with code running at that moment (frames on the stack) join `callers`.

    Only entry points the torch build has are replaced: on a CPU build `torch.cuda.is_available()`
    answers from their absence, and adding them would change that answer.
    """
    def refuse(name: str):
        def call(*args, **kwargs):
            running = []
            frame = sys._getframe(1)
            while frame is not None:
                running.append(frame.f_globals.get("__name__", ""))
                frame = frame.f_back
            asker = next((m for m in running if m != "torch" and not m.startswith("torch.")), "?")
            touched.append(f"{name} from {asker}")
            if callers is not None:
                callers.update(running)
            raise CudaTouched(f"torch.{name} called while preloading")
        return call

    saved = {name: getattr(torch._C, name) for name in _CUDA_ENTRY_POINTS if hasattr(torch._C, name)}
    saved_lazy = torch.cuda._lazy_init
    for name in saved:
        setattr(torch._C, name, refuse(name))
    torch.cuda._lazy_init = refuse("cuda._lazy_init")
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(torch._C, name, original)
        torch.cuda._lazy_init = saved_lazy


def preload(modules: tuple[str, ...]) -> dict[str, str]:
    """Import `modules` with CUDA forbidden; returns the modules left out, with the reason.

    When an import asks for CUDA, the modules it brought in whose code was running at that moment
    leave sys.modules, so the cell imports them afresh: a library that caught the refusal may have
    cached "no CUDA", and one that did not failed to import (Python has dropped it already). The
    modules it imported before, which never saw the refusal, stay. A module that is not installed is
    an optional extra the cell reports if it needs it.
    """
    skipped: dict[str, str] = {}
    for name in modules:
        before = set(sys.modules)
        touched: list[str] = []
        callers: set[str] = set()
        try:
            with cuda_forbidden(touched, callers):
                importlib.import_module(name)
        except ImportError as e:
            skipped[name] = f"not installed ({e})"
        except CudaTouched:
            pass
        if touched:
            for new in (set(sys.modules) - before) & callers:
                del sys.modules[new]
            skipped[name] = f"touches CUDA on import ({', '.join(sorted(set(touched)))})"
    return skipped


MODULES = modules_to_preload()
SKIPPED = preload(MODULES)

from bench import env, tiny  # noqa: E402  (after the guarded imports: both are CUDA-free)

tiny.tokenizer_json()
env.repo_state()

# What the imports left lives as long as the server. Frozen (after a collection, so that no garbage is kept),
# it is skipped by every collection in the cells forked from here: a full collection over it takes about
# 0.3 s, and the probe runs one in each cell; nor do the cells' collections write to the pages they share
# with the server.
gc.collect()
gc.freeze()
