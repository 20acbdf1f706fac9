"""Soft prompts: trainable vectors prepended to the input (peft) or to every attention's keys/values.

prefix-tuning and p-tuning train through a reparameterisation (an MLP, or an MLP/LSTM prompt
encoder) that inference does not need: what is stored is the folded prompt it produces, and
loading puts that folded table where the encoder was.

`prefix-tuning` is the in-house attention prefix (every attention of every architecture: encoder
self, decoder self, decoder cross); `prefix-tuning-peft` is peft's, which prefixes only T5's decoder
and which peft refuses on encoders under transformers >= 5.24 (recorded `unsupported` there).
"""

from __future__ import annotations

import inspect

from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, freeze, register, train_head
from bench.methods.peft_common import peft_build


def _folded_loader(build):
    """Wrap a peft build so that loading swaps the prompt encoder for its folded table."""

    def with_folded_load(model, config, ctx):
        adapted = build(model, config, ctx)
        load_peft_state = adapted.load_stored

        def load(state: dict) -> None:
            from bench.layers.folded_prompt import FoldedPrompt

            wrapped = adapted.model
            table = state["prompt_embeddings"]
            encoder = wrapped.prompt_encoder["default"]
            device = next(encoder.parameters()).device
            wrapped.prompt_encoder["default"] = FoldedPrompt(*table.shape).to(device)
            load_peft_state(state)

        adapted.load_stored = load
        return adapted

    with_folded_load.peft_config_class = build.peft_config_class
    return with_folded_load


def _prefix_tuning(model, config, ctx) -> Adapted:
    from bench.layers.attention_prefix import add_prefix, prefixed

    freeze(model)
    bank = add_prefix(model, ctx.bundle.arch, config["num_virtual_tokens"], config["encoder_hidden_size"])
    train_head(model, ctx)
    return prefixed(model, bank)


def _unsupported_where_peft_refuses(build):
    """peft passes prefixes as past keys/values; for task heads on an encoder (its models with a
    `_prefix_tuning_forward`) its forward raises ValueError when neither the model's forward nor its
    backbone's takes them, as under transformers >= 5.24. The same test, made here before training,
    records that as `unsupported`: a fact about the model and the installed versions."""

    def takes_past(module) -> bool:
        return "past_key_values" in inspect.signature(module.forward).parameters

    def guarded(model, config, ctx):
        adapted = build(model, config, ctx)
        wrapped, base = adapted.model, adapted.model.base_model
        if (hasattr(wrapped, "_prefix_tuning_forward") and not takes_past(base)
                and not takes_past(base.get_submodule(wrapped.transformer_backbone_name))):
            import peft
            import transformers

            raise Unsupported(f"peft {peft.__version__} cannot prefix this model under transformers "
                              f"{transformers.__version__}: its forward takes no past key values; "
                              "`prefix-tuning` is the in-house prefix")
        return adapted

    guarded.peft_config_class = build.peft_config_class
    return guarded


def _refused_by_encoder_decoder_heads(build):
    """transformers' sequence-classification heads on encoder-decoders (T5, BART) raise NotImplementedError
    for input embeddings, which is how peft passes a soft prompt: recorded `unsupported` before training,
    not `failed` at its first step."""

    def guarded(model, config, ctx):
        if ctx.bundle.head == "classifier" and ctx.bundle.kind == "encoder-decoder":
            raise Unsupported(f"{type(model).__name__} takes no input embeddings (transformers raises "
                              "NotImplementedError), and peft passes the soft prompt as input embeddings")
        return build(model, config, ctx)

    guarded.peft_config_class = build.peft_config_class
    return guarded


register(
    Method("prompt-tuning", "additive", "trainable embeddings prepended to the input (encoder input for T5)",
           "Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning",
           _refused_by_encoder_decoder_heads(peft_build("PromptTuningConfig",
                                                        fixed={"num_transformer_submodules": 1})),
           defaults={"num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"}, train={"lr": 3e-1}),
    Method("prefix-tuning", "additive", "trainable key/value prefixes in every attention (encoder, decoder, cross), "
           "trained through an MLP", "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation",
           _prefix_tuning, defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 512}, train={"lr": 1e-2},
           implementation="in-house attention prefix"),
    Method("prefix-tuning-peft", "additive", "peft's prefix tuning: past key/value prefixes (T5: decoder only)",
           "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation",
           _unsupported_where_peft_refuses(_folded_loader(peft_build("PrefixTuningConfig",
                                                                     fixed={"prefix_projection": True}))),
           defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 512}, train={"lr": 1e-2}, implementation="peft"),
    Method("p-tuning", "additive", "input prompt embeddings produced by a trained MLP prompt encoder",
           "Liu et al. 2021, GPT Understands, Too (P-Tuning)",
           _refused_by_encoder_decoder_heads(_folded_loader(peft_build("PromptEncoderConfig",
                                                                       fixed={"num_transformer_submodules": 1}))),
           defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 128, "encoder_reparameterization_type": "MLP"},
           train={"lr": 1e-2}),
)
