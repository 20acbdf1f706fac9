"""AdapterFusion (Pfeiffer et al. 2021): Pfeiffer adapters trained one per task, apart (a suite's stages), then
composed for a target task by a fusion layer per layer (bench/layers/fusion.py), trained with the task head while
every adapter and the model stay frozen.

```yaml
stages:  # each task adapter: a stage of adapter-pfeiffer on one task (its own head), saved
  - {name: adapter-sst2, method: adapter-pfeiffer, tasks: [sst2], train: {max_steps: 1000, lr: 1.0e-4}}
  - {name: adapter-rte, method: adapter-pfeiffer, tasks: [rte], train: {max_steps: 1000, lr: 1.0e-4}}
methods:
  - {name: adapter-fusion, overrides: {adapters: [adapter-sst2, adapter-rte]}}
```

The adapters' settings (reduction_factor, bottleneck_dim, activation) must be those of the stages' adapters (the
suite checks). Trainable: per layer query and key d×d with bias and value d×d without, 3d² + 2d, plus the head.
Kept: those and the head (params.stored), and beside them the task adapters it reads, without their stages' heads
(params.composed: Adapted.composed, sized as they are loaded).
"""

from __future__ import annotations

from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, composed_size, freeze, load_by_name, register, train_head

NAME = "adapter_fusion"  # the module each layer's fused adapters hang under


def _fusion(model, config, ctx):
    from bench.layers.fusion import adapter_tensors, add_fusion, fused_state

    states, count = list(ctx.stage_states), len(config["adapters"])
    if count < 2:
        raise Unsupported("adapter-fusion composes saved adapters: name two or more stages of adapter-pfeiffer in "
                          "its `adapters` setting")
    shapes_only = next(model.parameters()).is_meta  # estimate and the dry-run: nothing is loaded or computed
    if len(states) != count and not shapes_only:
        raise Unsupported(f"adapter-fusion fuses {count} adapters and was given {len(states)} saved states")
    freeze(model)
    dropout = float(getattr(model.config, "attention_probs_dropout_prob", 0.0) or 0.0)  # AdapterHub's choice
    fusions = add_fusion(model, ctx.bundle.arch, config, count, NAME, dropout)
    adapters = [] if shapes_only else adapter_tensors(states, "adapter")
    if adapters:
        load_by_name(model, fused_state(adapters, "adapter", NAME))
    train_head(model, ctx)
    # the task adapters, kept beside the fusion and head it stores: their sizes only (their tensors are in the model)
    adapted = Adapted(model, composed=composed_size(adapters))
    if config["regularization"]:
        adapted.after_backward.append(lambda step: [fusion.regularization_grad() for fusion in fusions])
    return adapted


register(Method(
    "adapter-fusion", "additive", "AdapterFusion: per layer, attention over the outputs of task adapters trained "
    "apart (frozen), trained with the task head", "Pfeiffer et al. 2021, AdapterFusion: Non-Destructive Task "
    "Composition for Transfer Learning", _fusion,
    defaults={"reduction_factor": 16, "bottleneck_dim": 0, "activation": "relu", "adapters": [],
              "regularization": True},
    train={"lr": 5e-5},  # Pfeiffer et al. 2021 train the fusion at 5e-5
    stage_settings={"adapters": "adapter-pfeiffer"}))
