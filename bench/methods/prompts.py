"""Soft prompts: trainable vectors prepended to the input (peft)."""

from __future__ import annotations

from bench.methods.base import Method
from bench.methods.peft_common import peft_build

METHODS = [
    Method("prompt-tuning", "additive", "trainable embeddings prepended to the input (encoder input for T5)",
           "Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning",
           peft_build("PromptTuningConfig", num_transformer_submodules=1),
           defaults={"num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"}, train={"lr": 3e-1}),
]
