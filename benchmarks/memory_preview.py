"""What the live-bytes step peak changes in issue 12's encoder cells, before a GPU can say (CPU, ~1 min).

    PYTHONPATH=. .venv/bin/python benchmarks/memory_preview.py

Issue 12 measured, on one H200 on 2026-11-28, the CUDA allocator's peak of ten methods on a RoBERTa-base
shaped encoder (fp32 weights, bf16 autocast, batch 32 x 256, AdamW), beside the prediction of that time:
weights + gradients + optimizer state + saved activations + the largest saved storage (MEASURED below, MiB).
This script steps the same model and methods on fake tensors under CPU bf16 autocast and prints, per
method, how much the new step term (memory.step_peak_bytes) differs from that old sum on the same pass,
beside how much the measured peak differed from the old prediction. Attention dropout is set to 0, so
that a CPU's sdpa keeps what CUDA's kernels keep (CUDA applies dropout inside its kernels; a CPU falls
back to the math kernel, which keeps the L x L probabilities). It is a preview: CPU and CUDA kernels and
autocast lists differ (this pass saves about 500 MiB more activations than the CUDA cells did), so only
the difference between the two accounts is compared, and benchmarks/gpu_check.py decides.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from bench.cell import probe
from bench.cell.objectives import lm_loss
from bench.models import REGISTRY
from bench.tools import estimate

MIB = 2**20
# method: (old predicted, measured device_peak_allocated_bytes), MiB, issue 12's table
MEASURED = {"full": (4518, 4220), "lora": (2399, 2570), "bitfit": (2190, 2373), "head-only": (485, 689),
            "adapter-houlsby": (2476, 2641), "mam-adapter": (2812, 2896), "prefix-tuning": (2358, 2994),
            "ia3": (3339, 3710), "dora": (3108, 3252), "prompt-tuning": (2344, 2546)}


def largest_saved_storage(step_fn) -> tuple[probe.StepMeasure, int]:
    """The step, and the largest storage it saved for backward (the old sum's workspace term)."""
    largest, sizes_without = [0], probe.StepCounters.saved_bytes_without

    def spy(self, tensors):
        sizes = sizes_without(self, tensors)
        largest[0] = max(sizes, default=0)
        return sizes

    probe.StepCounters.saved_bytes_without = spy
    try:
        return step_fn(), largest[0]
    finally:
        probe.StepCounters.saved_bytes_without = sizes_without


def main() -> None:
    spec = REGISTRY["roberta-base"]
    print("| method | new − old (MiB) | measured − old (MiB) |\n|---|---:|---:|")
    for method, (old, measured) in MEASURED.items():
        _, _, _, _, model = estimate._adapted_model(spec, method, 32, 256, "fp32", None, "auto")
        model.train()
        for module in model.modules():
            if type(module).__name__.endswith("SelfAttention"):
                module.dropout.p = 0.0
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        batch = {"input_ids": torch.full((32, 256), 5, dtype=torch.long), "labels": torch.zeros(32, dtype=torch.long)}
        with estimate._fake_weights(model, mode):
            step, largest = largest_saved_storage(lambda: probe.instrumented_step(
                model, batch, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16), fake_mode=mode,
                loss_fn=lm_loss))
        old_term = step.activation_bytes + step.grad_bytes + largest  # fused AdamW: no update term either way
        new_term = probe.step_peak_bytes(step, 0)
        print(f"| {method} | {(new_term - old_term) / MIB:+.0f} | {measured - old:+d} |", flush=True)


if __name__ == "__main__":
    main()
