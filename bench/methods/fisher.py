"""Partial fine-tuning by Fisher information: train only the entries that matter most (in-house).

Both methods score every eligible weight entry by empirical Fisher information (mean squared
gradient of the loss) on a few training batches before training, keep the top share, and mask the
gradients of all other entries to zero, so those entries never change (they are also exempt from
weight decay). The task head trains in full.
- fishmask (Sung et al. 2021): per-example squared gradients over `fisher_samples` examples, top
  `keep_ratio` of all model parameters (0.5 %); a fixed sparse mask.
- child-tuning (Child-Tuning_D, Xu et al. 2021): squared mini-batch gradients over `fisher_batches`
  batches, top `reserve_ratio` (30 %) of the transformer layers' parameters; as in the authors'
  code, parameters outside the layers (embeddings, final norms) are not masked and train in full.
  Also as there (ChildTuningD.py, ChildTuningOptimizer.py), with the run's `max_grad_norm`: each layer
  tensor's gradient is clipped to that norm on its own before it is squared, and in training the whole
  gradient is clipped before the mask applies (their trainer clips, then their optimizer masks), so the
  clipping factor is the unmasked gradient's (revision 2; revision 1 did neither).
Only the selected values (and their indices) of masked tensors are stored; tensors with no selected
entry are not trained at all (no gradient, no optimizer state).

On the meta device (`estimate`, `run --dry-run`) there are no weights to score: each method builds its twin
(_twin), whose masks have the eligible tensors' shapes and no values, which trains every tensor that may get a
selected entry (an upper bound of what the cell trains: the data decide which do), counts round(share·N) selected
entries as the cell's masks hold, and declares the scoring passes and the choice (base.Selection) for the estimate
to price.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bench.archs import ARCHS
from bench.methods.base import Adapted, Method, Selection, freeze, register, train_head, trainable_state

if TYPE_CHECKING:
    import torch

LAYER_PARAM = re.compile(r"\.(layer|block|h|layers)\.\d+\.")


def _eligible(model, ctx, layers_only: bool) -> list[tuple[str, torch.nn.Parameter]]:
    heads = tuple(ctx.bundle.head_modules)
    return [(n, p) for n, p in model.named_parameters()
            if not n.startswith(heads) and (not layers_only or LAYER_PARAM.search(n))]


def fisher_scores(model, params: list[torch.nn.Parameter], batches: list[dict], per_example: bool,
                  clip_norm: float | None = None) -> list[torch.Tensor]:
    """Mean over examples (or batches) of the squared gradient of the loss, per entry; with `clip_norm`, each
    tensor's gradient is first clipped to that norm on its own (Child-Tuning's authors do)."""
    import torch

    for p in params:
        p.requires_grad_(True)
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()  # no dropout: the score of the model as it is
    # One-row slices keep their batch's right padding, which the attention mask and the -100
    # labels make irrelevant to the loss.
    pieces = [{k: v[i: i + 1] for k, v in b.items()} for b in batches for i in range(len(b["input_ids"]))] \
        if per_example else batches
    for piece in pieces:
        model.zero_grad(set_to_none=True)
        model(**piece).loss.backward()
        for score, p in zip(scores, params):
            if p.grad is not None:
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(p, clip_norm)
                score += p.grad.float() ** 2 / len(pieces)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def kept_entries(share: float, eligible: int) -> int:
    """The entries top_share_masks keeps of `eligible`: round(share·N), at least one."""
    return max(1, int(round(share * eligible)))


def top_share_masks(scores: list[torch.Tensor], share: float) -> list[torch.Tensor]:
    """Masks keeping the `share` highest-scoring entries over all tensors together (round(share·N) entries)."""
    import torch

    flat = torch.cat([s.flatten() for s in scores])
    keep = kept_entries(share, flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    return [m.view_as(s) for m, s in zip(torch.split(chosen, [s.numel() for s in scores]), scores)]


def _twin(named, share: float, passes: int, rows: int, calibration_rows: int, why: str):
    """The meta-device twin's masks (every eligible tensor's shape, no values) and its Selection: `passes` passes of
    `rows` rows scoring the `named` tensors, with the memory fisher_scores and top_share_masks hold (fp32 scores of
    every entry; after each backward, the largest tensor's squared gradient and its share, fp32; in the choice, the
    scores, their concatenation, the bool `chosen` over all entries and topk's fp32 values and int64 indices of the
    kept ones); `why`: what the twin's trained tensors assume."""
    import torch

    eligible = sum(p.numel() for _, p in named)
    kept = kept_entries(share, eligible)
    masks = [(n, p, torch.empty_like(p, dtype=torch.bool, device="meta")) for n, p in named]
    return masks, kept, Selection(
        scored=[p for _, p, _ in masks], passes=passes, rows=rows, calibration_rows=calibration_rows,
        held_bytes=4 * eligible, pass_bytes=2 * 4 * max(p.numel() for _, p in named),
        choice_bytes=(4 + 4 + 1) * eligible + (4 + 8) * kept, mask_bytes=eligible,
        upper_bound=f"{why}: every one is taken to have a selected entry, so it trains (gradient, optimizer state); "
                    "which do is the Fisher scores' choice, so this is an upper bound of the memory the cell's trained "
                    "tensors take, exact where each has one")


def _masked(model, ctx, masks_for, unmasked=(), clip_before_mask: float | None = None, twin=None) -> Adapted:
    """Train the selected entries of masked tensors, the `unmasked` tensors in full, and the head; with
    `clip_before_mask`, the whole gradient is clipped to that norm before the masks apply (the training loop's
    own clipping, after the masks, then finds nothing left to clip). `twin`: the meta-device twin's (masks, kept
    entries, Selection) from _twin, in place of `masks_for`."""
    import torch

    freeze(model)  # Fisher scores need gradients of the eligible tensors only
    named = twin[0] if twin else [(n, p, m) for n, p, m in masks_for() if m.any()]
    freeze(model)
    for p in [p for _, p, _ in named] + list(unmasked):
        p.requires_grad_(True)
    train_head(model, ctx)
    pairs = [(p, m) for _, p, m in named]
    trained = [p for p in model.parameters() if p.requires_grad]

    def mask_gradients(step: int) -> None:
        if clip_before_mask is not None:
            torch.nn.utils.clip_grad_norm_([p for p in trained if p.grad is not None], clip_before_mask)
        for p, m in pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    def stored() -> dict[str, torch.Tensor]:
        state = trainable_state(model, skip={id(p) for p, _ in pairs})
        for name, p, m in named:
            index = m.flatten().nonzero().squeeze(1)
            state[f"{name}.values"] = p.detach().flatten()[index]
            state[f"{name}.indices"] = index.to(torch.int32 if p.numel() < 2 ** 31 else torch.int64)
        return state

    def load(state: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, values in state.items():
                if key.endswith(".values"):
                    name = key[: -len(".values")]
                    params[name].view(-1)[state[f"{name}.indices"].long()] = values.to(params[name].dtype)
                elif not key.endswith(".indices"):
                    params[key].copy_(values)

    return Adapted(model, after_backward=[mask_gradients], stored_state=stored, load_stored=load, grad_masks=pairs,
                   selected_entries=twin[1] if twin else None, selection=twin[2] if twin else None)


def _fishmask(model, config, ctx):
    n_batches = -(-config["fisher_samples"] // ctx.train.batch_size)

    def masks():
        named = _eligible(model, ctx, layers_only=False)
        scores = fisher_scores(model, [p for _, p in named], ctx.calibration(n_batches), per_example=True)
        return [(n, p, m) for (n, p), m in zip(named, top_share_masks(scores, config["keep_ratio"]))]

    rows = n_batches * ctx.train.batch_size  # scored one by one
    twin = _twin(_eligible(model, ctx, layers_only=False), config["keep_ratio"], rows, 1, rows,
                 "fishmask masks every parameter tensor but the head's") if ctx.device == "meta" else None
    return _masked(model, ctx, masks, twin=twin)


def _child_tuning(model, config, ctx):
    layers = _eligible(model, ctx, layers_only=True)
    in_layers = {id(p) for _, p in layers}
    outside = [p for _, p in _eligible(model, ctx, layers_only=False) if id(p) not in in_layers]

    def masks():
        scores = fisher_scores(model, [p for _, p in layers], ctx.calibration(config["fisher_batches"]),
                               per_example=False, clip_norm=ctx.train.max_grad_norm)
        return [(n, p, m) for (n, p), m in zip(layers, top_share_masks(scores, config["reserve_ratio"]))]

    rows = config["fisher_batches"] * ctx.train.batch_size
    twin = _twin(layers, config["reserve_ratio"], config["fisher_batches"], ctx.train.batch_size, rows,
                 "child-tuning masks every tensor of the transformer layers") if ctx.device == "meta" else None
    return _masked(model, ctx, masks, unmasked=outside, clip_before_mask=ctx.train.max_grad_norm, twin=twin)


register(
    Method("fishmask", "partial", "FISH mask: the top 0.5 % of parameters by per-example empirical Fisher train",
           "Sung et al. 2021, Training Neural Networks with Fixed Sparse Masks", _fishmask,
           defaults={"keep_ratio": 0.005, "fisher_samples": 1024}, train={"lr": 1e-4}, masks_gradients=True),
    Method("child-tuning", "partial", "Child-Tuning_D: a Fisher-selected child network (30 % of layer weights) "
           "trains, embeddings in full",
           "Xu et al. 2021, Raise a Child in Large Language Model", _child_tuning,
           defaults={"reserve_ratio": 0.3, "fisher_batches": 64}, train={"lr": 2e-5}, masks_gradients=True,
           # 2: the authors' gradient clipping, per tensor in the Fisher estimate and before the mask in training
           revisions={arch: 2 for arch in ARCHS}),
)
