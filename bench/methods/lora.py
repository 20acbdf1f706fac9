"""The LoRA family: a trainable low-rank update B·A beside frozen weight matrices (peft).

Variants differ in one setting each, so each is its own registry name (a comparison must not call
DoRA "LoRA"): rsLoRA scales by alpha/sqrt(r), DoRA splits magnitude and direction, PiSSA initialises
A and B from the weight's principal singular vectors, AdaLoRA reallocates rank during training.
"""

from __future__ import annotations

from bench.archs import targets
from bench.methods.base import Method, register
from bench.methods.peft_common import peft_build

QV_TARGETS = targets(lambda arch: {"target_modules": arch.q_v})  # bench/archs.py: ArchSpec.q_v
LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
PAPER = "Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models"


def _adalora_schedule(config: dict, ctx) -> dict:
    """AdaLoRA's warm-up (tinit) and final phase (tfinal) as fractions of the cell's steps."""
    kwargs = {k: v for k, v in config.items() if k not in ("tinit_ratio", "tfinal_ratio")}
    kwargs["total_step"] = ctx.total_steps
    kwargs["tinit"] = int(config["tinit_ratio"] * ctx.total_steps)
    kwargs["tfinal"] = int(config["tfinal_ratio"] * ctx.total_steps)
    return kwargs


register(
    Method("lora", "reparameterized", "low-rank update W + (alpha/r)·B·A on the attention q and v projections",
           PAPER, peft_build("LoraConfig"), defaults=LORA_DEFAULTS, targets=QV_TARGETS,
           train={"lr": 5e-4}, mergeable=True),
    Method("rslora", "reparameterized", "LoRA scaled by alpha/sqrt(r) (rank-stabilised)",
           "Kalajdzievski 2023, A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
           peft_build("LoraConfig", fixed={"use_rslora": True}), defaults=LORA_DEFAULTS, targets=QV_TARGETS,
           train={"lr": 5e-4}, mergeable=True),
    Method("dora", "reparameterized", "weight-decomposed LoRA: a trained magnitude vector and a LoRA direction",
           "Liu et al. 2024, DoRA: Weight-Decomposed Low-Rank Adaptation",
           peft_build("LoraConfig", fixed={"use_dora": True}), defaults=LORA_DEFAULTS, targets=QV_TARGETS,
           train={"lr": 5e-4}, mergeable=True),
    Method("pissa", "reparameterized", "LoRA initialised from the principal singular values/vectors of W",
           "Meng et al. 2024, PiSSA: Principal Singular Values and Singular Vectors Adaptation",
           peft_build("LoraConfig", fixed={"init_lora_weights": "pissa"}),
           defaults={"r": 8, "lora_alpha": 8, "lora_dropout": 0.0}, targets=QV_TARGETS,
           train={"lr": 2e-5}, mergeable=True),
    Method("adalora", "reparameterized", "SVD-form LoRA whose rank budget moves to important matrices in training",
           "Zhang et al. 2023, Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
           peft_build("AdaLoraConfig", translate=_adalora_schedule,
                      after_step=lambda wrapped: wrapped.base_model.update_and_allocate),  # AdaLoRA's rank budget
           defaults={"init_r": 12, "target_r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "beta1": 0.85,
                     "beta2": 0.85, "orth_reg_weight": 0.5, "deltaT": 10, "tinit_ratio": 0.1,
                     "tfinal_ratio": 0.2},
           targets=QV_TARGETS, train={"lr": 5e-4}, mergeable=True),
)
