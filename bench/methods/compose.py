"""Unified fine-tuning: a suite composes a hybrid from registry methods, `{compose: [a, b]}`.

Parts are applied in order to the same model. A part may freeze the whole model before adding its
own parameters, so what trains afterwards is the union of what each part left trainable. Stored
state is every trainable tensor of the result. peft wraps the model it adapts and cannot adapt its
own wrapper again, so a composition holds at most one peft-based part.
"""

from __future__ import annotations

from bench.errors import Unsupported
from bench.methods.base import Adapted, ApplyContext


def apply_composition(parts: list[dict], model, ctx: ApplyContext) -> Adapted:
    from bench import methods

    chosen = [methods.get(p["name"]) for p in parts]
    peft_parts = [m.name for m in chosen if getattr(m.build, "peft_config_class", None)]
    if len(peft_parts) > 1:
        raise Unsupported(f"a composition can hold one peft-based method, not {', '.join(peft_parts)}")
    trainable: dict[int, object] = {}
    hooks_backward, hooks_step = [], []
    for method, part in zip(chosen, parts):
        adapted = method.apply(model, part["config"], ctx)
        if not adapted.trains:
            raise Unsupported(f"'{method.name}' trains nothing, so it cannot be part of a composition")
        model = adapted.model
        trainable.update({id(p): p for p in model.parameters() if p.requires_grad})
        hooks_backward += adapted.after_backward
        hooks_step += adapted.after_step
    for p in trainable.values():
        p.requires_grad_(True)
    return Adapted(model, after_backward=hooks_backward, after_step=hooks_step)
