"""LoRA: a trainable low-rank update B·A beside frozen weight matrices (peft)."""

from __future__ import annotations

from bench.methods.base import Method
from bench.methods.peft_common import peft_build

# Attention query and value projections, as in the LoRA paper's GLUE runs. GPT-2 fuses q, k and v
# into one Conv1D (c_attn), so there the update covers all three.
QV_TARGETS = {
    "roberta": {"target_modules": ["query", "value"]},
    "bert": {"target_modules": ["query", "value"]},
    "t5": {"target_modules": ["q", "v"]},
    "gpt2": {"target_modules": ["c_attn"]},
    "llama": {"target_modules": ["q_proj", "v_proj"]},
}

METHODS = [
    Method("lora", "reparameterized", "low-rank update W + (alpha/r)·B·A on the attention q and v projections",
           "Hu et al. 2022, LoRA", peft_build("LoraConfig"),
           defaults={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none"},
           targets=QV_TARGETS, train={"lr": 5e-4}, mergeable=True),
]
