"""Baselines every comparison needs: full fine-tuning, a linear probe, and no training at all."""

from __future__ import annotations

from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, freeze, register, train_head


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
    return Adapted(model)


def _in_context(model, config, ctx):
    """Its "weights" are its demonstrations: the training rows, solved, stored as token ids."""
    import torch

    from bench.tasks.features import demonstration_ids

    if ctx.bundle.head != "lm":
        raise Unsupported("in-context learning needs a text-to-text model (an LM head reads the demonstrations)")
    if ctx.task is None:
        raise Unsupported("in-context learning needs a task: its demonstrations are the task's training rows")
    if ctx.task.eval_task is not None:
        raise Unsupported("in-context demonstrations come from the task's own training rows, and "
                          f"{ctx.task.name} is evaluated on another task ({ctx.task.evaluation.name})")
    freeze(model)

    def demonstrations():  # tokenised when stored: a weightless build (estimate's, on the meta device) has no
        # tokenizer and stores nothing, and what it evaluates is priced at its prompts' length
        ids = demonstration_ids(ctx.task, ctx.bundle.tokenizer, ctx.task.prompts[0], ctx.train_rows)
        return {"demonstrations": torch.tensor(ids, dtype=torch.int32)}

    return Adapted(model, stored_state=demonstrations)


register(
    Method("full", "baseline", "full fine-tuning: every parameter trains",
           "Devlin et al. 2019 / Howard & Ruder 2018", _full, train={"lr": 2e-5}, reference=True),
    Method("head-only", "baseline", "linear probe: only the task head trains, the model is frozen",
           "Peters et al. 2019 (feature extraction)", _head_only, train={"lr": 1e-3},
           trains_below_head=False),
    Method("zero-shot", "baseline", "no training: the pretrained model (with its new head) is evaluated as is",
           "Brown et al. 2020 (zero-shot evaluation)", _zero_shot, trains=False),
    Method("icl", "baseline", "in-context learning: the training examples (k shots), solved, precede each prompt",
           "Brown et al. 2020, Language Models are Few-Shot Learners", _in_context, trains=False,
           in_context=True),
)
