"""Building a method from a peft config class: our explicit settings in, a PeftModel out."""

from __future__ import annotations

from bench.methods.base import Adapted


def peft_build(config_class: str, **fixed):
    """A `build` function for `Method` that applies peft's `config_class` with the resolved settings.

    `fixed` are settings that define the method (e.g. use_dora=True for DoRA) and are not overridable.
    The task head goes into `modules_to_save`, so peft trains it and stores it with the adapter.
    """

    def build(model, config, ctx):
        import peft

        heads = ctx.bundle.head_modules
        peft_config = getattr(peft, config_class)(
            task_type=ctx.bundle.peft_task_type, modules_to_save=heads or None, **fixed, **config)
        wrapped = peft.get_peft_model(model, peft_config)
        return Adapted(wrapped, stored_state=lambda: peft.get_peft_model_state_dict(wrapped))

    build.peft_config_class = config_class
    return build
