"""Fused kernels for a LLaMA-family model (`train.kernels: liger`): Liger's RMSNorm, SwiGLU MLP and rotary
embedding, patched into the built model before a method adapts it, so every method of a cell with this setting
trains on the same kernels. Liger's fused linear cross-entropy is not applied: it replaces the model's own loss,
and the harness computes its losses from the logits (bench/cell/objectives.py). bench/plan/kernels.py checked the
model and the package before any work; liger-kernel is imported here, in the cell, only when asked for."""

from __future__ import annotations

import importlib

# config.json's model_type -> Liger's patch for it (liger_kernel.transformers)
LIGER_PATCHES = {"llama": "apply_liger_kernel_to_llama", "mistral": "apply_liger_kernel_to_mistral",
                 "qwen2": "apply_liger_kernel_to_qwen2"}


def apply_kernels(model, kernels: str) -> None:
    """Patch `model` in place with the kernels a cell asked for ('torch': the model's own, nothing to do)."""
    if kernels == "torch":
        return
    if kernels != "liger":
        raise ValueError(f"unknown kernels {kernels!r}")
    model_type = model.config.model_type
    if model_type not in LIGER_PATCHES:
        raise ValueError(f"kernels: liger has no patch for model_type {model_type!r} (it has: "
                         f"{', '.join(LIGER_PATCHES)})")
    patch = getattr(importlib.import_module("liger_kernel.transformers"), LIGER_PATCHES[model_type])
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)
