"""Hybrids that combine several mechanisms (in-house; peft cannot gate or mix them).

- mam-adapter (He et al. 2022): prefix tuning on attention (30 vectors, MLP reparameterisation) plus a
  scaled parallel adapter on the FFN (bottleneck 512, s = 4), the paper's best "mix-and-match" setting.
- unipelt (Mao et al. 2022): LoRA on q and v, prefix tuning and a sequential adapter after the FFN block,
  each scaled by its own learned gate σ(W·x): the model learns which mechanism to use where. The adapter sits as
  AdapterHub's default SeqBnConfig, which UniPELTConfig uses (and the authors' code, whose adapter_config is
  "pfeiffer"), does: as adapter-pfeiffer (bench/methods/adapters.py), post-LN it reads LN(h + x) and the layer
  norm is applied again to h + x + gated adapter, pre-LN it reads and adds to the residual stream after the
  FFN's add; its gate reads what the adapter reads. A stored adapter without after_residual in its config (made
  before this placement, whatever its revision) is rebuilt reading the FFN output projection h, as it trained. The
  LoRA and adapter gates are per token; the prefix gate is per example (see bench/layers/attention_prefix.py), so
  no gate lets a decoder token read later tokens or lets padding change a prediction. The LoRA gate replaces
  alpha/r (the authors' code and AdapterHub), so there is no lora_alpha; a stored adapter of revision 2 or
  earlier carries one in its config and is rebuilt with it (bench/layers/gated_lora.py).
MAM's and UniPELT's adapters start with a zero down-projection bias, as AdapterHub's "mam_adapter" (He et al.'s
code) and "bert" (UniPELT's SeqBnConfig) inits.
Prefix MLPs are folded away for storage.
"""

from __future__ import annotations

from bench.archs import ARCHS
from bench.methods.base import Method, freeze, register, train_head


def _mam(model, config, ctx):
    from bench.layers.attention_prefix import add_prefix
    from bench.layers.bottleneck import add_parallel
    from bench.methods.prefix_state import prefixed

    freeze(model)
    arch = ctx.bundle.arch
    bank = add_prefix(model, arch, config["prefix_length"], config["prefix_mid_dim"])
    add_parallel(model, arch, {"bottleneck_dim": config["bottleneck_dim"], "reduction_factor": 1,
                               "activation": "relu", "scaling": config["scaling"]}, "parallel_adapter",
                 zero_down_bias=True)
    train_head(model, ctx)
    return prefixed(model, bank)


def _unipelt(model, config, ctx):
    from bench.layers.attention_prefix import add_prefix
    from bench.layers.bottleneck import add_after_ffn_block, add_sequential
    from bench.layers.gated_lora import add_gated_lora
    from bench.methods.prefix_state import prefixed

    freeze(model)
    arch = ctx.bundle.arch
    add_gated_lora(model, arch, config["lora_r"], config.get("lora_alpha"))  # only revision <= 2 has alpha
    bank = add_prefix(model, arch, config["prefix_length"], config["prefix_mid_dim"], gated=True)
    adapter = {"reduction_factor": config["reduction_factor"], "bottleneck_dim": 0, "activation": "relu"}
    if config.get("after_residual", False):  # absent from a stored adapter made before this placement
        add_after_ffn_block(model, arch, adapter, "gated_adapter", gated=True, zero_down_bias=True)
    else:
        add_sequential(model, arch, ["ffn_output"], adapter, "gated_adapter", gated=True, zero_down_bias=True)
    train_head(model, ctx)
    return prefixed(model, bank)


register(
    Method("mam-adapter", "hybrid", "prefix tuning on attention + scaled parallel adapter on the FFN",
           "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning", _mam,
           defaults={"prefix_length": 30, "prefix_mid_dim": 800, "bottleneck_dim": 512, "scaling": 4.0},
           train={"lr": 5e-4},
           revisions={arch: 2 for arch in ARCHS}),  # 2: the adapter's down bias starts at zero (was uniform)
    Method("unipelt", "hybrid", "gated LoRA (q, v) + gated prefix + gated sequential adapter (after the FFN block)",
           "Mao et al. 2022, UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning", _unipelt,
           # after_residual: the adapter reads the FFN block's output after its residual add (and layer norm)
           defaults={"lora_r": 8, "prefix_length": 10, "prefix_mid_dim": 512, "reduction_factor": 16,
                     "after_residual": True},
           train={"lr": 5e-4},
           # 2 (T5, GPT-2, LLaMA): decoder tokens' prefix gates are two learned logits (attention_prefix.InputFreeGate)
           # 3 there, 2 elsewhere: the LoRA gate replaces alpha/r (was gate · alpha/r); adapter down bias from zero;
           # the adapter after the FFN block's residual add and layer norm (SeqBnConfig's default; was after h)
           revisions={**{arch: 2 for arch in ARCHS}, "t5": 3, "gpt2": 3, "llama": 3}),
)
