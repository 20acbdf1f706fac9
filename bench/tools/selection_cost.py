"""The estimate's price of a Fisher-masked method's phase before training (its meta-device twin's Selection,
bench/methods/base.py): the scoring passes' FLOPs (`flops.selection`) and the phase's memory
(`memory.selection_peak_bytes`), each pass a fake step (bench/tools/fake_pass.py) run as bench/methods/fisher.py
fisher_scores runs it: eval mode, under the step's autocast and gradient checkpointing, with only the scored tensors
requiring a gradient."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from bench.cell.measure import weight_bytes
from bench.cell.probe import StepMeasure


@contextlib.contextmanager
def _scoring(model: torch.nn.Module, scored: list):
    """Within the block, only the `scored` tensors require a gradient, as in the passes that score them."""
    before = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in scored}
    for p, _ in before:
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, required in before:
            p.requires_grad_(required)


def selection_cost(built, step: Callable[..., StepMeasure], seq_len: int, flops_only: bool = False,
                   mask_bytes: int | None = None) -> tuple[int, int | None]:
    """(flops.selection, memory.selection_peak_bytes; None with `flops_only`) of the twin `built`'s Selection: its
    passes, each `step(rows, seq_len, flops_only=, training=False)` (the estimate's fake step of `rows` unpadded rows
    of `seq_len` tokens, on the device and under the autocast of the training step it prices, as fisher_scores runs
    the cell's) in eval mode with only the scored tensors requiring a gradient, forward + backward FLOPs × passes;
    the peak: the weights, the calibration batches (the step's batch per example and `mask_bytes`, the bytes per
    example of the attention mask collate adds to it, priced_task.collate_mask_bytes; None: an int64 row of `seq_len`),
    and the busier of a pass (the scores, the pass's most bytes alive at once, or its gradients with the Selection's
    temporaries) and the choice."""
    selection = built.selection
    with _scoring(built.model, selection.scored):
        one = step(selection.rows, seq_len, flops_only=flops_only, training=False)
    flops = selection.passes * (one.forward_flops + one.backward_flops)
    if flops_only:
        return flops, None
    mask = 8 * seq_len if mask_bytes is None else mask_bytes
    calibration = selection.calibration_rows * (one.batch_bytes // selection.rows + mask)
    passes = selection.held_bytes + max(max(one.live_peaks.values(), default=0), one.grad_bytes + selection.pass_bytes)
    return flops, weight_bytes(built.model)["weights_bytes"] + calibration + max(passes, selection.choice_bytes)


def with_selection(memory: dict, selection, selection_peak: int) -> dict:
    """The memory section with a Selection's figures: `mask_bytes` (held through training), `selection_peak_bytes`,
    `upper_bound` (why the twin's figures bound the cell's from above), and `predicted_peak_bytes` the larger of
    training's peak with the masks and the selection's (which runs on the whole model before any sharding)."""
    trained = memory["predicted_peak_bytes"]
    return {**memory, "mask_bytes": selection.mask_bytes, "selection_peak_bytes": selection_peak,
            "predicted_peak_bytes": None if trained is None else max(trained + selection.mask_bytes, selection_peak),
            "upper_bound": [*memory.get("upper_bound", []), selection.upper_bound]}
