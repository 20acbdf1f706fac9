"""Baselines every comparison needs: full fine-tuning, a linear probe, and no training at all."""

from __future__ import annotations

from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, freeze, train_head


def _full(model, config, ctx):
    for p in model.parameters():
        p.requires_grad_(True)
    return Adapted(model)


def _head_only(model, config, ctx):
    freeze(model)
    if ctx.bundle.head_modules:
        train_head(model, ctx)
        return Adapted(model)
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or out.weight is emb.weight:
        raise Unsupported("head-only needs a task head; this text-to-text model predicts with an LM head "
                          "tied to its input embeddings, so there is nothing separate to probe")
    out.weight.requires_grad_(True)
    return Adapted(model)


def _zero_shot(model, config, ctx):
    freeze(model)
    return Adapted(model, trains=False)


def _in_context(model, config, ctx):
    if ctx.bundle.head != "lm":
        raise Unsupported("in-context learning needs a text-to-text model (an LM head reads the demonstrations)")
    freeze(model)
    return Adapted(model, trains=False, in_context=True)


METHODS = [
    Method("full", "baseline", "full fine-tuning: every parameter trains",
           "Devlin et al. 2019 / Howard & Ruder 2018", _full, train={"lr": 2e-5}),
    Method("head-only", "baseline", "linear probe: only the task head trains, the model is frozen",
           "Peters et al. 2019 (feature extraction)", _head_only, train={"lr": 1e-3}),
    Method("zero-shot", "baseline", "no training: the pretrained model (with its new head) is evaluated as is",
           "Brown et al. 2020 (zero-shot evaluation)", _zero_shot),
    Method("icl", "baseline", "in-context learning: the training examples (k shots), solved, precede each prompt",
           "Brown et al. 2020, Language Models are Few-Shot Learners", _in_context),
]
