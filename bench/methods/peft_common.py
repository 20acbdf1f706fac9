"""Building a method from a peft config class: our explicit settings in, a PeftModel out."""

from __future__ import annotations

import copy

from bench.methods.base import Adapted


def peft_build(config_class: str, fixed: dict | None = None, translate=None, after_step=None):
    """A `build` function for `Method` that applies peft's `config_class` with the resolved settings.

    fixed: settings that define the method (use_dora=True makes DoRA) and are not overridable.
    translate(config, ctx) -> peft kwargs: for settings of ours that peft spells differently
    (e.g. AdaLoRA's schedule as fractions of the cell's total steps).
    after_step(peft_model) -> hook: work a method needs after each optimizer step.
    The task head goes into `modules_to_save`, so peft trains it and stores it with the adapter.
    """

    def build(model, config, ctx):
        import peft

        kwargs = translate(config, ctx) if translate else dict(config)
        heads = ctx.bundle.head_modules
        peft_config = getattr(peft, config_class)(
            task_type=ctx.bundle.peft_task_type, modules_to_save=heads or None, **(fixed or {}), **kwargs)
        wrapped = peft.get_peft_model(model, peft_config)
        return Adapted(
            wrapped,
            after_step=[after_step(wrapped)] if after_step else [],
            stored_state=lambda: peft.get_peft_model_state_dict(wrapped),
            load_stored=lambda state: _load(peft, wrapped, state),
            merge=(lambda: merged(wrapped)) if hasattr(wrapped, "merge_and_unload") else None,
        )

    build.peft_config_class = config_class
    return build


def merged(wrapped):
    """A plain model with the adapter folded into the base weights (the wrapped model is untouched)."""
    from peft.utils.other import ModulesToSaveWrapper

    model = copy.deepcopy(wrapped)
    # peft's non-LoRA tuners fail to unload a wrapped task head that has no `weight` of its own
    # (RoBERTa's two-layer head): put the trained copy in the wrapper's place first.
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.modules_to_save["default"])
    return model.merge_and_unload()


def _load(peft, wrapped, state) -> None:
    result = peft.set_peft_model_state_dict(wrapped, state)
    # prompt learning loads "prompt_embeddings" through its prompt encoder, outside the state dict
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if k != "prompt_embeddings"]
    if unexpected:
        raise ValueError(f"stored tensors not in the model: {unexpected}")
