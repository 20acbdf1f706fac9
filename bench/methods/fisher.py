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
Both score under the cell's autocast, as its training steps run (child-tuning's revision 3, fishmask's 2; before,
the scoring passes ran in fp32 in a bf16 cell too), and the loss the cell trains: its objective's (T-Few's terms over
the answer options, a mixture's rows through their task heads), on the cell's first training batches as training
draws and collates them, fishmask's examples each collated alone (child-tuning's revision 4, fishmask's 3; before,
the model's own loss on one-row slices of padded batches of a uniform draw: not a T-Few cell's loss nor its balanced
draw or redrawn templates, and no task head chosen in a mixture's cell).
Only the selected values (and their indices) of masked tensors are stored; tensors with no selected
entry are not trained at all (no gradient, no optimizer state).

On the meta device (`estimate`, `run --dry-run`) there are no weights to score: each method builds its twin
(_twin), whose masks have the eligible tensors' shapes and no values, which trains every tensor that may get a
selected entry (an upper bound of what the cell trains: the data decide which do), counts round(share·N) selected
entries as the cell's masks hold, and declares the scoring passes and the choice (base.Selection) for the estimate
to price.
"""

from __future__ import annotations

import contextlib
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


def fisher_scores(model, params: list[torch.nn.Parameter], batches: list[dict], loss=None,
                  clip_norm: float | None = None, autocast=contextlib.nullcontext) -> list[torch.Tensor]:
    """Mean over `batches` (each one example for fishmask, a training batch for child-tuning) of the squared gradient
    of `loss` (the cell's objective's, ApplyContext.loss; None: the model's own), per entry: the loss the cell trains,
    as the authors score theirs (revision 3 of fishmask, 4 of child-tuning; before, always the model's own, which is
    not a T-Few cell's and fails on a mixture's task heads). With `clip_norm`, each tensor's gradient is first clipped
    to that norm on its own (Child-Tuning's authors do). The forward and its loss run under `autocast` (the cell's,
    ApplyContext.autocast), as its training steps' do: the Fisher of the model as it trains, its products in the dtype
    training's run in (revision 3 of child-tuning, 2 of fishmask; before, always in fp32). The scores are fp32
    whatever the autocast: the gradients are of the weights, not of their bf16 copies."""
    import torch

    for p in params:
        p.requires_grad_(True)
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()  # no dropout: the score of the model as it is
    for piece in batches:
        model.zero_grad(set_to_none=True)
        with autocast():
            value = loss(model, piece) if loss else model(**piece).loss
        value.backward()
        del value  # not held while the squared gradients are summed: the estimate's pass holds none then
        for score, p in zip(scores, params):
            if p.grad is not None:
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(p, clip_norm)
                score += p.grad.float() ** 2 / len(batches)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def kept_entries(share: float, eligible: int) -> int:
    """The entries top_share_masks keeps of `eligible`: round(share·N), at least one."""
    return max(1, int(round(share * eligible)))


# Entries compared and counted at once by the selection: counting a bool comparison (`.sum()`) first casts it to
# int64 inside the operator (make_reduction's `self.to(int64)`, on CPU and CUDA alike), 8 bytes per entry that no
# operator-level instrument sees, so each count covers at most this many entries (9 MiB of transients at most).
SELECTION_CHUNK = 2**20


def _chunks(t: torch.Tensor) -> list[torch.Tensor]:
    """`t` flat, in views of at most SELECTION_CHUNK entries, in order."""
    return list(t.view(-1).split(SELECTION_CHUNK))


def _count(entries: torch.Tensor) -> int:
    return int(entries.sum())


def top_share_masks(scores: list[torch.Tensor], share: float) -> list[torch.Tensor]:
    """Masks keeping the k = round(share·N) highest-scoring entries over all tensors together (at least one).

    The scores are non-negative fp32 (mean squared gradients), whose int32 bit patterns order as the floats do, so
    the k-th largest score is found by bisection over those bit patterns, each step counting the entries at or above
    a candidate chunk by chunk; every entry above it is kept, then the first entries equal to it (in tensor order,
    then flat index order) until exactly k are. So it keeps what torch.topk would, up to which of tied entries, and
    chooses those deterministically. Nothing is sorted or concatenated: besides the masks (N bytes) it holds, at
    once, one chunk's comparison (1 byte an entry), its count's hidden int64 cast (8 bytes an entry) and the count
    (8 bytes), whatever N (selection_bytes prices it; a flat topk held ~16 hidden bytes an entry on CPU, and on
    CUDA sorts all N and refuses more than 2^31 - 1)."""
    import torch

    bits = [_chunks(s.view(torch.int32)) for s in scores]
    keep = kept_entries(share, sum(s.numel() for s in scores))
    low, high = 0, 2**31 - 1  # the largest bit pattern with at least `keep` entries at or above it lies in here
    while low < high:
        middle = (low + high + 1) // 2
        if sum(_count(chunk >= middle) for chunks in bits for chunk in chunks) >= keep:
            low = middle
        else:
            high = middle - 1
    masks = [s.view(torch.int32) > low for s in scores]
    ties = keep - sum(_count(chunk) for mask in masks for chunk in _chunks(mask))
    for chunks, mask in zip(bits, masks):
        for chunk, kept in zip(chunks, _chunks(mask)):
            equal = chunk == low
            found = _count(equal)  # counted even once `ties` is 0: the peak is the same whatever the scores
            if ties and found <= ties:
                kept.logical_or_(equal)
                ties -= found
            elif ties:  # the shortest prefix holding `ties` equal entries, by bisection over its length
                short, long = 1, chunk.numel()
                while short < long:
                    middle = (short + long) // 2
                    short, long = (short, middle) if _count(equal[:middle]) >= ties else (middle + 1, long)
                kept[:short].logical_or_(equal[:short])
                ties = 0
            del equal  # before the next chunk's comparison: one chunk's at a time
    return masks


def selection_bytes(eligible: int, largest: int) -> int:
    """The most top_share_masks holds at once, beside the fp32 scores of the `eligible` entries (4 bytes each) that
    it reads: the bool masks (1 byte an eligible entry), one chunk's comparison and its count's int64 cast (1 + 8
    bytes an entry of the largest chunk: SELECTION_CHUNK entries, or the `largest` tensor's when smaller) and the
    count (one int64)."""
    return 4 * eligible + eligible + 9 * min(SELECTION_CHUNK, largest) + 8


def _twin(named, share: float, passes: int, rows: int, calibration_rows: int, why: str):
    """The meta-device twin's masks (every eligible tensor's shape, no values) and its Selection: `passes` passes of
    `rows` rows scoring the `named` tensors, with the memory fisher_scores and top_share_masks hold (fp32 scores of
    every entry; after each backward, the largest tensor's squared gradient and its share, fp32; in the choice,
    selection_bytes); `why`: what the twin's trained tensors assume."""
    import torch

    eligible = sum(p.numel() for _, p in named)
    largest = max(p.numel() for _, p in named)
    kept = kept_entries(share, eligible)
    masks = [(n, p, torch.empty_like(p, dtype=torch.bool, device="meta")) for n, p in named]
    return masks, kept, Selection(
        scored=[p for _, p, _ in masks], passes=passes, rows=rows, calibration_rows=calibration_rows,
        held_bytes=4 * eligible, pass_bytes=2 * 4 * largest, choice_bytes=selection_bytes(eligible, largest),
        mask_bytes=eligible,
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
    if ctx.train.gradient_checkpointing and not twin:  # the scoring passes recompute each layer in backward, as the
        from bench.models import enable_gradient_checkpointing  # cell's steps will (and as the estimate prices them)

        enable_gradient_checkpointing(model)
    candidates = twin[0] if twin else masks_for()
    named = [(n, p, m) for n, p, m in candidates if twin or m.any()]
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
                   untrained=[p for _, p, m in candidates if not twin and not m.any()],
                   selected_entries=twin[1] if twin else None, selection=twin[2] if twin else None)


def _fishmask(model, config, ctx):
    n_batches = -(-config["fisher_samples"] // ctx.train.batch_size)

    def masks():
        named = _eligible(model, ctx, layers_only=False)
        scores = fisher_scores(model, [p for _, p in named], ctx.calibration(n_batches, per_example=True), ctx.loss,
                               autocast=ctx.autocast)
        return [(n, p, m) for (n, p), m in zip(named, top_share_masks(scores, config["keep_ratio"]))]

    rows = n_batches * ctx.train.batch_size  # scored one by one
    heads = ctx.bundle.head_modules  # none on a language model: its LM head is masked as any other tensor
    masked = f"every parameter tensor but the task head's ({', '.join(heads)})" if heads else \
        "every parameter tensor, the LM head's included (a language model has no task head that trains in full)"
    twin = _twin(_eligible(model, ctx, layers_only=False), config["keep_ratio"], rows, 1, rows,
                 f"fishmask masks {masked}") if ctx.device == "meta" else None
    return _masked(model, ctx, masks, twin=twin)


def _child_tuning(model, config, ctx):
    layers = _eligible(model, ctx, layers_only=True)
    in_layers = {id(p) for _, p in layers}
    outside = [p for _, p in _eligible(model, ctx, layers_only=False) if id(p) not in in_layers]

    def masks():
        scores = fisher_scores(model, [p for _, p in layers], ctx.calibration(config["fisher_batches"]),
                               ctx.loss, clip_norm=ctx.train.max_grad_norm, autocast=ctx.autocast)
        return [(n, p, m) for (n, p), m in zip(layers, top_share_masks(scores, config["reserve_ratio"]))]

    rows = config["fisher_batches"] * ctx.train.batch_size
    twin = _twin(layers, config["reserve_ratio"], config["fisher_batches"], ctx.train.batch_size, rows,
                 "child-tuning masks every tensor of the transformer layers") if ctx.device == "meta" else None
    return _masked(model, ctx, masks, unmasked=outside, clip_before_mask=ctx.train.max_grad_norm, twin=twin)


# Why a Fisher-masked cell cannot run sharded (Method.unshardable)
MASKS_BOUND = ("it keeps per-parameter gradient masks, which sharding (FSDP2's fully_shard replaces every parameter) "
               "would leave on the old parameters, training every entry")

register(
    Method("fishmask", "partial", "FISH mask: the top 0.5 % of parameters by per-example empirical Fisher train",
           "Sung et al. 2021, Training Neural Networks with Fixed Sparse Masks", _fishmask,
           defaults={"keep_ratio": 0.005, "fisher_samples": 1024}, train={"lr": 1e-4},
           unshardable=MASKS_BOUND,
           # 2: the scoring passes under the cell's autocast, as training's (before: in fp32 in a bf16 cell too);
           # 3: they score the cell's objective on training's draw, each example alone (before: the model's own loss)
           revisions={arch: 3 for arch in ARCHS}),
    Method("child-tuning", "partial", "Child-Tuning_D: a Fisher-selected child network (30 % of layer weights) "
           "trains, embeddings in full",
           "Xu et al. 2021, Raise a Child in Large Language Model", _child_tuning,
           defaults={"reserve_ratio": 0.3, "fisher_batches": 64}, train={"lr": 2e-5},
           unshardable=MASKS_BOUND,
           # 2: the authors' gradient clipping, per tensor in the Fisher estimate and before the mask in training;
           # 3: the scoring passes under the cell's autocast, as training's (before: in fp32 in a bf16 cell too);
           # 4: they score the cell's objective on training's batches (before: the model's own loss, a uniform draw)
           revisions={arch: 4 for arch in ARCHS}),
)
