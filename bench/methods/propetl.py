"""ProPETL: one prototype PETL module shared by every layer, each layer using it through its own learned
binary mask (in-house; Zeng, Zhang & Lu 2023, One Network, Many Masks).

Layer l computes with the prototype's weights W ⊙ M_l: the layers share the values and differ in which
of them they use. Where the paper's text leaves a detail open, the authors' code decides
(github.com/ChaosCodes/ProPETL, propetl-roberta: scripts/run_adapter.sh, run_lora.sh, adapters/modeling.py):
- Masks cover the prototype's weight matrices (adapter down and up, LoRA A and B); its biases are
  shared and unmasked.
- Mask from scores: per layer and per matrix, the entries with the largest |score| are kept (top-k,
  edge-popup style), exactly n - floor((1 - keep_ratio)·n) of n as the authors' GetSubnet rounds. The
  paper's "sparsity" is this kept share in their code: 0.5 for the adapter, 0.1 for LoRA.
- Scores: real-valued, kaiming_uniform(a=√5) as the authors' (U(±1/√fan)), trained by a straight-through
  estimator: the forward pass uses the 0/1 mask, the backward pass passes the mask's gradient on to |score|.
- propetl-adapter: one Pfeiffer adapter (sequential, once per layer after the FFN block, ReLU; the
  authors' `adapter_config=pfeiffer`), reduction factor 12 (bottleneck 64 on RoBERTa-base), placed where
  the authors' code places it, as adapter-pfeiffer: post-LN (propetl-roberta, adapter-transformers'
  PfeifferConfig) it reads LN(h + x) and the same layer norm is applied again to h + x + adapter(LN(h + x));
  pre-LN (propetl-t5's "preiffer": the adapter reads the FFN output plus the block's input) it reads the
  residual stream s = h + x after the FFN's add and the block returns s + adapter(s). Revision 1 read the FFN
  output projection h (after_residual=False; a stored adapter of revision 1, whose config lacks the setting,
  is rebuilt so). Its down projection has nn.Linear's init and its up projection starts at zero (the
  authors': BERT's N(0, 0.02)), so the adapted model starts as the pretrained one (and mask scores get
  gradients from the second step on). One prototype serves every layer, an encoder-decoder's encoder and
  decoder alike.
- propetl-lora: one LoRA prototype per target (q and v: ArchSpec.q_v), each shared by that target in
  every layer (self- and cross-attention alike), r = 32, alpha = 48, A kaiming, B zero.
- Learning rates: prototype 1e-4; masks 3e-3 (adapter), 3e-2 (LoRA). One learning rate trains
  everything here, so scores start lr/mask_lr times smaller: a mask depends only on the order of its
  |scores|, and a step of SGD or Adam-style optimizers does not scale with the parameter, so the masks
  move as a separate mask_lr would move them (decoupled weight decay aside; not so under Adafactor with
  scale_parameter, which scales steps by the tensor's RMS).

Counts. Adapter (d model width, b bottleneck): a prototype of 2db + b + d elements and 2db mask bits
per layer; RoBERTa-base (d 768, b 64, 12 layers): 99,136 elements and 12 × 98,304 = 1,179,648 bits.
LoRA: a prototype of r(i + o) per target and r(i + o) bits per adapted module; RoBERTa-base (q and v,
r 32): 98,304 elements and 1,179,648 bits. The paper reports storage in float equivalents, a mask bit
as 1/32 of a float (our reading; its text was not at hand): 136,000 (adapter) and 135,168 (LoRA),
≈ 0.11 % of RoBERTa-base. Here `params.trainable` counts a float score per mask bit (adapter:
1,278,784, head excluded); the stored state is the prototype and the head (`params.stored`) plus each
mask as a bool tensor (a byte per entry in `stored_bytes`, 8× a packed bit mask).
"""

from __future__ import annotations

from bench.archs import ARCHS
from bench.methods.base import Adapted, Method, freeze, load_by_name, register, train_head, trainable_state

PAPER = "Zeng, Zhang & Lu 2023, One Network, Many Masks: Towards More Parameter-Efficient Transfer Learning"


def _score_scale(config: dict, ctx) -> float:
    """Scores start lr/mask_lr times the authors' init, so the one learning rate moves masks at mask_lr's pace."""
    return ctx.train.lr / config["mask_lr"]


def _adapted(model) -> Adapted:
    """Stored: what trains, but each layer's scores are replaced by the boolean mask they select."""
    from bench.layers.masks import MaskScores

    scores = {name: module for name, module in model.named_modules() if isinstance(module, MaskScores)}

    def stored() -> dict:
        state = trainable_state(model, skip={id(module.scores) for module in scores.values()})
        state.update({f"{name}.mask": module.binary() for name, module in scores.items()})
        return state

    def load(state: dict) -> None:
        # scores of 1 where the mask keeps and 0 elsewhere select exactly that mask again
        load_by_name(model, {k.removesuffix(".mask") + ".scores" if k.endswith(".mask") else k: v
                             for k, v in state.items()})

    return Adapted(model, stored_state=stored, load_stored=load)


def _propetl_adapter(model, config, ctx):
    from bench.layers import sites
    from bench.layers.bottleneck import bottleneck_width
    from bench.layers.masks import AdapterPrototype, LayerMasks

    freeze(model)
    arch = ctx.bundle.arch
    first = sites.find(model, arch, "ffn_output")[0][1]
    dim = sites.out_features(first)
    prototype = sites.place_like(AdapterPrototype(dim, bottleneck_width(dim, config), config["activation"]), first)
    model.add_module("propetl_adapter", prototype)
    scale = _score_scale(config, ctx)
    def layer_masks(_width: int) -> LayerMasks:
        return LayerMasks(prototype, config["keep_ratio"], scale)

    if config.get("after_residual", False):  # absent from a stored adapter of revision 1
        sites.attach_after_ffn_block(model, arch, "propetl", layer_masks)
    else:
        sites.attach_sequential(model, arch, ["ffn_output"], "propetl", layer_masks)
    train_head(model, ctx)
    return _adapted(model)


def _propetl_lora(model, config, ctx):
    from bench.layers import sites
    from bench.layers.masks import LayerMasks, LoRAPrototype

    freeze(model)
    scale = _score_scale(config, ctx)
    for target in ARCHS[ctx.bundle.arch].q_v:
        found = [m for n, m in model.named_modules() if n.endswith("." + target) and hasattr(m, "weight")]
        prototype = sites.place_like(LoRAPrototype(sites.in_features(found[0]), sites.out_features(found[0]),
                                                   config["r"], config["lora_alpha"]), found[0])
        model.add_module(f"propetl_lora_{target}", prototype)
        for module in found:
            sites.attach_beside(module, "propetl", LayerMasks(prototype, config["keep_ratio"], scale))
    train_head(model, ctx)
    return _adapted(model)


register(
    Method("propetl-adapter", "additive", "one sequential FFN adapter shared by every layer, each layer using "
           "it through its own learned binary mask (half of its weights)", PAPER, _propetl_adapter,
           # after_residual: the adapter reads the FFN block's output after its residual add (and layer norm)
           defaults={"reduction_factor": 12, "bottleneck_dim": 0, "activation": "relu", "keep_ratio": 0.5,
                     "mask_lr": 3e-3, "after_residual": True},
           train={"lr": 1e-4},
           # 2: after the FFN block's residual add and layer norm, as the authors' Pfeiffer adapter (was after h)
           revisions={arch: 2 for arch in ARCHS}),
    Method("propetl-lora", "reparameterized", "one LoRA per target (q, v) shared by every layer, each layer "
           "using it through its own learned binary mask (10 % of its entries)", PAPER, _propetl_lora,
           defaults={"r": 32, "lora_alpha": 48, "keep_ratio": 0.1, "mask_lr": 3e-2}, train={"lr": 1e-4}),
)
