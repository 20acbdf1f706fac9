"""Bottleneck adapters (in-house: AdapterHub cannot be installed beside transformers 5).

A bottleneck maps width d -> b -> d (down, non-linearity, up). Its up projection starts at zero, so
an adapted model starts out computing exactly what the pretrained model computes.
- adapter-houlsby: sequential, after the attention output projection and after the FFN output
  projection of every layer, and the layer norms train too (Houlsby et al. 2019); swish, reduction
  factor 16 (AdapterHub's defaults).
- adapter-pfeiffer: sequential, once per layer after the FFN block (Pfeiffer et al. 2021), ReLU, 16; placed
  as the authors' AdapterHub places it by default (SeqBnConfig): on post-LN models (BERT, RoBERTa) it reads
  the block's layer-normed output LN(h + x) and that layer norm is applied again to h + x + adapter(LN(h + x));
  on pre-LN models (T5, GPT-2, LLaMA) it reads the residual stream after the FFN's add, s = h + x, and the
  block returns s + adapter(s). Revision 1 read the FFN output projection h instead (after_residual=False;
  stored adapters of revision 1, whose config lacks the setting, are rebuilt so).
- adapter-parallel: from the FFN block's input, added to its output, scaled (He et al. 2022); its down bias
  starts at zero, as AdapterHub's ParBnConfig ("mam_adapter" init) starts it (revision 2; 1 kept nn.Linear's).
Houlsby's adapters sit before dropout, residual and layer norm, as in Houlsby et al. (AdapterHub's
DoubleSeqBnConfig).
"""

from __future__ import annotations

from bench.archs import ARCHS
from bench.methods.base import Adapted, Method, freeze, register, train_head


def _sequential(positions: list[str]):
    def build(model, config, ctx):
        from bench.layers.bottleneck import add_sequential, train_norms

        freeze(model)
        add_sequential(model, ctx.bundle.arch, positions, config, "adapter")
        if config.get("train_layer_norm"):
            train_norms(model, ctx)
        train_head(model, ctx)
        return Adapted(model)

    return build


def _pfeiffer(model, config, ctx):
    from bench.layers.bottleneck import add_after_ffn_block, add_sequential

    freeze(model)
    if config.get("after_residual", False):  # absent from a stored adapter of revision 1
        add_after_ffn_block(model, ctx.bundle.arch, config, "adapter")
    else:
        add_sequential(model, ctx.bundle.arch, ["ffn_output"], config, "adapter")
    train_head(model, ctx)
    return Adapted(model)


def _parallel(model, config, ctx):
    from bench.layers.bottleneck import add_parallel

    freeze(model)
    add_parallel(model, ctx.bundle.arch, config, "parallel_adapter", zero_down_bias=True)
    train_head(model, ctx)
    return Adapted(model)


_BOTTLENECK_DEFAULTS = {"reduction_factor": 16, "bottleneck_dim": 0}  # bottleneck_dim > 0 overrides the factor

register(
    Method("adapter-houlsby", "additive", "sequential bottleneck adapters after attention and after the FFN, "
           "plus the layer norms", "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP",
           _sequential(["attention_output", "ffn_output"]),
           defaults={**_BOTTLENECK_DEFAULTS, "activation": "swish", "train_layer_norm": True}, train={"lr": 1e-3}),
    Method("adapter-pfeiffer", "additive", "sequential bottleneck adapter after the FFN block only",
           "Pfeiffer et al. 2021, AdapterFusion", _pfeiffer,
           # after_residual: the adapter reads the FFN block's output after its residual add (and layer norm)
           defaults={**_BOTTLENECK_DEFAULTS, "activation": "relu", "after_residual": True}, train={"lr": 1e-3},
           # 2: placed after the FFN block's residual add and layer norm, as AdapterHub's default SeqBnConfig
           revisions={arch: 2 for arch in ARCHS}),
    Method("adapter-parallel", "additive", "parallel bottleneck adapter on the FFN, output scaled by s",
           "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning", _parallel,
           defaults={**_BOTTLENECK_DEFAULTS, "activation": "relu", "scaling": 4.0},
           train={"lr": 1e-3},
           # 2: the down bias starts at zero, as ParBnConfig's "mam_adapter" init (was nn.Linear's uniform)
           revisions={arch: 2 for arch in ARCHS}),
)
