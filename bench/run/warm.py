"""Imported once by the executor's fork server, so every cell process starts warm.

Importing torch, transformers' model code, peft and the metric libraries costs seconds; a forked
child inherits them for free. Only imports and pure caches belong here: nothing may start threads
or touch CUDA before the fork (bench.run.preload imports with CUDA forbidden, and leaves what asks for
it, such as peft with bitsandbytes on a GPU machine, to the cells).
"""

from __future__ import annotations

import gc
import os
import pkgutil

from bench import layers
from bench.archs import ARCHS
from bench.run.executors.cells import PRELOAD_ENV
from bench.run.preload import preload_for_server
from bench.tasks.metrics import METRICS

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


MODULES = modules_to_preload()
SKIPPED = preload_for_server(MODULES)

from bench import env, tiny  # noqa: E402  (after the guarded imports: both are CUDA-free)

tiny.tokenizer_json()
env.repo_state()

# What the imports left lives as long as the server. Frozen (after a collection, so that no garbage is kept),
# it is skipped by every collection in the cells forked from here: a full collection over it takes about
# 0.3 s, and the probe runs one in each cell; nor do the cells' collections write to the pages they share
# with the server.
gc.collect()
gc.freeze()
