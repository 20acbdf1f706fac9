"""Soft prompts: trainable vectors prepended to the input (peft) or to every attention's keys/values.

prefix-tuning and p-tuning train through a reparameterisation (an MLP, or an MLP/LSTM prompt
encoder) that inference does not need: what is stored is the folded prompt it produces, and
loading puts that folded table where the encoder was.

`prefix-tuning` is the in-house attention prefix (every attention of every architecture: encoder
self, decoder self, decoder cross); `prefix-tuning-peft` is peft's, which prefixes only T5's decoder
and which peft refuses on encoders under transformers >= 5.24 (recorded `unsupported` there).

`prompt-tuning-tfew` is T-Few's prompt tuning (in-house, bench/layers/input_prompt.py): prompts in front of both
an encoder-decoder's encoder and decoder inputs, started from vocabulary rows. A method of its own rather than
settings of `prompt-tuning`, whose defaults are in every recorded prompt-tuning cell's id and which is peft's code.
"""

from __future__ import annotations

import inspect

from bench.archs import ARCHS
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
    from bench.layers.attention_prefix import add_prefix
    from bench.methods.prefix_state import prefixed

    freeze(model)
    bank = add_prefix(model, ctx.bundle.arch, config["num_virtual_tokens"], config["encoder_hidden_size"])
    train_head(model, ctx)
    return prefixed(model, bank)


def _tfew_prompt_tuning(model, config, ctx) -> Adapted:
    from bench.layers.input_prompt import add_prompts

    freeze(model)
    add_prompts(model, config["num_virtual_tokens"], config["decoder_prompt"])
    train_head(model, ctx)
    return Adapted(model)


def _unsupported_where_peft_refuses(build):
    """peft passes prefixes as past keys/values, which two things refuse; the same tests, made here before
    training, record them as `unsupported`: facts about the model, its settings and the installed versions.
    - For task heads on an encoder (its models with a `_prefix_tuning_forward`), its forward raises ValueError
      when neither the model's forward nor its backbone's takes them, as under transformers >= 5.24.
    - transformers' gradient checkpointing drops the cache each layer is given (a layer replayed in backward
      would write to it twice), prefix included, and the attention then fails on the mask's width."""

    def takes_past(module) -> bool:
        return "past_key_values" in inspect.signature(module.forward).parameters

    def guarded(model, config, ctx):
        import peft
        import transformers
        from transformers.modeling_layers import GradientCheckpointingLayer

        drops_cache = ctx.train.gradient_checkpointing and any(  # read before peft wraps the layers
            isinstance(m, GradientCheckpointingLayer) and not getattr(m, "_can_checkpoint_with_cache", False)
            for m in model.modules())
        adapted = build(model, config, ctx)
        wrapped, base = adapted.model, adapted.model.base_model
        if (hasattr(wrapped, "_prefix_tuning_forward") and not takes_past(base)
                and not takes_past(base.get_submodule(wrapped.transformer_backbone_name))):
            raise Unsupported(f"peft {peft.__version__} cannot prefix this model under transformers "
                              f"{transformers.__version__}: its forward takes no past key values; "
                              "`prefix-tuning` is the in-house prefix")
        if drops_cache:
            raise Unsupported(f"under gradient checkpointing, transformers {transformers.__version__} drops the "
                              "past keys/values peft's prefix tuning passes the prefix as; `prefix-tuning` is the "
                              "in-house prefix, which works with it")
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


def _classified_at_last_token(build):
    """Wrap a peft soft-prompt build with classify_at_last_token."""

    def guarded(model, config, ctx):
        adapted = build(model, config, ctx)
        classify_at_last_token(adapted.model, ctx)
        return adapted

    guarded.peft_config_class = build.peft_config_class
    return guarded


def classify_at_last_token(wrapped, ctx) -> None:
    """transformers' classifier heads on decoders (GPT-2, LLaMA) classify from a row's last token, which they
    find in the input ids; fed input embeddings, which is how peft passes prompt tuning's and p-tuning's
    prompts, they take the last position instead, a pad in a right-padded row (transformers warns so), and
    would train and predict from it. So for those on a decoder's classifier head, the head's output at the
    last position is replaced by its output at the row's last attended position, which the attention mask
    (virtual tokens included) tells. `wrapped`: a peft model, as built here or loaded (bench/methods/external.py)."""
    from bench.layers.pooling import use_last_attended

    if (ctx.bundle.head == "classifier" and ctx.bundle.kind == "decoder"  # prefix tuning passes the input ids
            and wrapped.active_peft_config.peft_type in ("PROMPT_TUNING", "P_TUNING")):
        use_last_attended(wrapped.base_model, ctx.bundle.head_modules)


# 2: decoders' classifier heads read each row's last token, not the last position (_classified_at_last_token)
_LAST_TOKEN_FIX = {"gpt2": 2, "llama": 2}

register(
    Method("prompt-tuning", "additive", "trainable embeddings prepended to the input (encoder input for T5)",
           "Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning",
           _classified_at_last_token(_refused_by_encoder_decoder_heads(
               peft_build("PromptTuningConfig", fixed={"num_transformer_submodules": 1}))),
           defaults={"num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"}, train={"lr": 3e-1},
           revisions=_LAST_TOKEN_FIX, encodes_in_forward=True),
    Method("prompt-tuning-tfew", "additive", "T-Few's prompt tuning: trainable embeddings prepended to the encoder "
           "input and the decoder input, started from vocabulary rows (encoder-decoders)",
           "Liu et al. 2022, T-Few (prompt tuning: Lester et al. 2021)", _tfew_prompt_tuning,
           # T-Few's configs/prompt_tuning-10_prompts.json; its Config's prompt_tuning_decoder default
           defaults={"num_virtual_tokens": 10, "decoder_prompt": True}, train={"lr": 3e-1},
           unsupported={a.name: f"T-Few's prompt tuning prompts an encoder-decoder's encoder and decoder; {a.title} "
                                f"is {'an' if a.kind == 'encoder' else 'a'} {a.kind}: `prompt-tuning` prompts its input"
                        for a in ARCHS.values() if a.kind != "encoder-decoder"}),
    Method("prefix-tuning", "additive", "trainable key/value prefixes in every attention (encoder, decoder, cross), "
           "trained through an MLP", "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation",
           _prefix_tuning, defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 512}, train={"lr": 1e-2},
           implementation="in-house attention prefix"),
    Method("prefix-tuning-peft", "additive", "peft's prefix tuning: past key/value prefixes (T5: decoder only)",
           "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation",
           _unsupported_where_peft_refuses(_folded_loader(peft_build("PrefixTuningConfig",
                                                                     fixed={"prefix_projection": True}))),
           defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 512}, train={"lr": 1e-2}, implementation="peft",
           encodes_in_forward=True),
    Method("p-tuning", "additive", "input prompt embeddings produced by a trained MLP prompt encoder",
           "Liu et al. 2021, GPT Understands, Too (P-Tuning)",
           _classified_at_last_token(_refused_by_encoder_decoder_heads(_folded_loader(
               peft_build("PromptEncoderConfig", fixed={"num_transformer_submodules": 1})))),
           defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 128, "encoder_reparameterization_type": "MLP"},
           train={"lr": 1e-2}, revisions=_LAST_TOKEN_FIX, encodes_in_forward=True),
)
