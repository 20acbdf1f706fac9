"""Building a method from a peft config class: our explicit settings in, a PeftModel out."""

from __future__ import annotations

import contextlib
import copy
import functools

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


@functools.cache  # the installed libraries' answer, asked once a process, not at every generate call
def _generation_cache_names() -> tuple[str, str]:
    """(the keyword transformers' `generate` hands the key-value cache to prepare_inputs_for_generation under, the
    one peft's soft-prompt generation reads it under): transformers >= 5.24 hands `cache`; peft 0.21 reads
    `past_key_values`, peft 0.22 asks transformers."""
    import inspect

    from transformers.generation.utils import GenerationMixin

    handed = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
        else "past_key_values"
    try:
        from peft.import_utils import get_transformers_cache_name
    except ImportError:  # peft before 0.22 reads one name
        return handed, "past_key_values"
    return handed, get_transformers_cache_name()


@contextlib.contextmanager
def cache_named_for_peft(model):
    """Inside it, `model.generate` (a peft soft-prompt model: prompt tuning, p-tuning, peft's prefix tuning) hands
    peft the key-value cache under the name peft reads, where that is not the name transformers hands it under.
    Missing it, peft takes every decoding step for the first: it feeds the virtual tokens (or prefix) again, so the
    cache grows by them each step and the tokens generated are wrong. The prepared inputs go back to the model
    under transformers' name. Only this model's two methods are wrapped, and only while the block runs; where the
    names agree (or the model has no soft prompt) nothing changes."""
    handed, read = _generation_cache_names()
    config = getattr(model, "active_peft_config", None)
    if handed == read or not getattr(config, "is_prompt_learning", False):
        yield
        return
    base_prepare, prepare = model.base_model_prepare_inputs_for_generation, model.prepare_inputs_for_generation

    def base_prepare_named_for_peft(*args, **kwargs):
        inputs = base_prepare(*args, **kwargs)
        if inputs.get(handed) is not None:
            inputs[read] = inputs.pop(handed)
        return inputs

    def prepare_named_for_transformers(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        if read in inputs:
            inputs[handed] = inputs.pop(read)
        return inputs

    model.base_model_prepare_inputs_for_generation = base_prepare_named_for_peft
    model.prepare_inputs_for_generation = prepare_named_for_transformers
    try:
        yield
    finally:  # peft's generate leaves its base model's method as base_model_prepare_inputs_for_generation
        model.base_model_prepare_inputs_for_generation = model.base_model.prepare_inputs_for_generation = base_prepare
        del model.prepare_inputs_for_generation  # the class's again
