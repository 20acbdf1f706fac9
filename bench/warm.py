"""Imported once by the executor's fork server, so every cell process starts warm.

Importing torch, transformers' model code, peft and the metric libraries costs seconds; a forked
child inherits them for free. Only imports and pure caches belong here: nothing may start threads
or touch CUDA before the fork.
"""

import importlib

import bench.cell  # noqa: F401  (torch, transformers, peft, the harness)
from bench import env, tiny

for _module in (
    "transformers.models.roberta.modeling_roberta", "transformers.models.bert.modeling_bert",
    "transformers.models.t5.modeling_t5", "transformers.models.gpt2.modeling_gpt2",
    "transformers.models.llama.modeling_llama", "peft.tuners", "safetensors.torch",
    "sklearn.metrics", "scipy.stats", "sacrebleu", "rouge_score.rouge_scorer",
):
    try:
        importlib.import_module(_module)
    except ImportError:  # an optional extra: the cell imports (and reports) it if it needs it
        pass

tiny.tokenizer_json()
env.repo_state()
