"""HyperFormer++ (Karimi Mahabadi et al. 2021): one shared hypernetwork generates every adapter, per task and layer.

The reference is the authors' code (rabeehk/hyperformer, hyperformer/configs/hyperformer++.json: the "meta-adapter"
config with `efficient_unique_hyper_net`), built here in-house (bench/layers/hyperformer.py). A learned embedding
per task (64 wide, trained; that config leaves `train_task_embeddings` off, so no MLP projects it); per stack of
layers (T5's encoder and decoder each have their own, as there; an encoder or a decoder-only model has one), an MLP
(192 -> 128 -> 64) maps [task embedding; layer-id embedding; block-type embedding] (64 each) to a code, layer-normed,
from which linear generators make the adapter's down and up weights and biases (reduction factor 32, gelu_new) and
the weight and bias of the layer norm after the adapter (the reference's conditional post-adapter layer norm; none
before it). The adapter sits after the self-attention output projection and after the FFN output projection of
every layer (not T5's cross-attention), before dropout and the residual: y + LN_gen(up(gelu(down(y)))). The
hypernetworks, the task embeddings and every layer norm of the model train (`unfreeze_layer_norms`); T5's LM head
does not (`unfreeze_lm_head` false), a classifier's task head does (as every method's here). Every hypernetwork
linear layer starts N(0, 0.01²) with zero biases, the embeddings N(0, 1), as there: the generated layer norm's
weight starts near zero (spread about 0.08), not at one, so the adapted model starts close to, not at, the base.

The tasks are those of the cell's mixture (bench/plan/mixtures.py), one on a single-task cell; each row reads its
own task's adapters (bench/layers/task_heads.select tells the task embeddings which rows are which task).

Where this differs from the reference: a batch may mix tasks (the reference's batches hold one task each, so it
generates one adapter per forward; here each row gets its task's); on encoders and decoder-only models (which the
reference does not adapt) the sites are the same two per layer.

Trainable, per stack of L layers with width d and bottleneck b = d // 32 (E = P = 64 the embedding and code
widths, h = 128): L·E + 2·E + (3E + 1)·h + (h + 1)·P + 2P + (P + 1)·(2·d·b + b + 3·d); once per model n_tasks·E;
and the layer norms.
"""

from __future__ import annotations

from bench.methods.base import Adapted, Method, freeze, register, train_head


def _hyperformer(model, config, ctx):
    from bench.layers import hyperformer
    from bench.layers.bottleneck import train_norms

    task = getattr(ctx, "task", None)
    freeze(model)
    hyperformer.attach(model, ctx.bundle.arch, len(task.members) if task is not None and task.members else 1,
                       config)
    if config["train_layer_norm"]:
        train_norms(model, ctx)
    train_head(model, ctx)
    return Adapted(model)


register(Method(
    "hyperformer", "additive", "HyperFormer++: one hypernetwork per stack generates every layer's adapters from "
    "task, layer and block embeddings (shared across tasks)",
    "Karimi Mahabadi et al. 2021, Parameter-efficient Multi-task Fine-tuning for Transformers via Shared "
    "Hypernetworks", _hyperformer,
    defaults={"reduction_factor": 32, "task_embedding_dim": 64, "projected_task_embedding_dim": 64,
              "task_hidden_dim": 128, "activation": "gelu_new", "train_layer_norm": True},
    train={"lr": 3e-4}))
