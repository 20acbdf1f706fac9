"""Fused kernels for a LLaMA-family model (`train.kernels: liger`): Liger's RMSNorm, SwiGLU MLP and rotary
embedding, patched into the built model before a method adapts it, so every method of a cell with this setting
trains on the same kernels; and, for a causal LM, its fused linear cross-entropy, which never makes the
[tokens, vocab] logits. Liger binds that one as the model's forward (lce_forward), which skips the logits only in
training with labels, where the harness reads nothing but the loss (bench/cell/objectives.py: lm_loss); a forward
without labels (tfew's token log-probabilities, evaluation, forgetting) still returns them. A classifier (LLaMA with
a sequence-classification head) has no LM head to fuse, and Liger's forward would replace its own, so it is left
out there. bench/tools/liger_memory.py predicts the memory of the same choice. bench/plan/kernels.py checked the
model and the package before any work; liger-kernel is imported here, in the cell, only when asked for."""

from __future__ import annotations

import importlib

# config.json's model_type -> Liger's patch for it (liger_kernel.transformers)
LIGER_PATCHES = {"llama": "apply_liger_kernel_to_llama", "mistral": "apply_liger_kernel_to_mistral",
                 "qwen2": "apply_liger_kernel_to_qwen2"}


def liger_patch(model_type: str) -> str:
    """The name of Liger's patch for a config's model_type; ValueError, naming those it has, where it has none."""
    if model_type not in LIGER_PATCHES:
        raise ValueError(f"kernels: liger has no patch for model_type {model_type!r} (it has: "
                         f"{', '.join(LIGER_PATCHES)})")
    return LIGER_PATCHES[model_type]


def apply_kernels(model, kernels: str) -> None:
    """Patch `model` in place with the kernels a cell asked for ('torch': the model's own, nothing to do)."""
    if kernels == "torch":
        return
    if kernels != "liger":
        raise ValueError(f"unknown kernels {kernels!r}")
    patch = getattr(importlib.import_module("liger_kernel.transformers"), liger_patch(model.config.model_type))
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
          fused_linear_cross_entropy=type(model).__name__.endswith("ForCausalLM"), model=model)
