"""Soft prompts: trainable vectors prepended to the input or to every attention's keys/values (peft).

prefix-tuning and p-tuning train through a reparameterisation (an MLP, or an MLP/LSTM prompt
encoder) that inference does not need: what is stored is the folded prompt it produces, and
loading puts that folded table where the encoder was.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.methods.base import Method
from bench.methods.peft_common import peft_build


class FoldedPrompt(nn.Module):
    """The folded output of a prompt encoder, answering peft's calls the way the encoder did."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.embedding = nn.Embedding(rows, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens)

    def _load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # peft's loading hook
        with torch.no_grad():
            self.embedding.weight.copy_(state["prompt_embeddings"])


def _folded_loader(build):
    """Wrap a peft build so that loading swaps the prompt encoder for its folded table."""

    def with_folded_load(model, config, ctx):
        adapted = build(model, config, ctx)
        load_peft_state = adapted.load_stored

        def load(state: dict[str, torch.Tensor]) -> None:
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


METHODS = [
    Method("prompt-tuning", "additive", "trainable embeddings prepended to the input (encoder input for T5)",
           "Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning",
           peft_build("PromptTuningConfig", fixed={"num_transformer_submodules": 1}),
           defaults={"num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"}, train={"lr": 3e-1}),
    Method("prefix-tuning", "additive", "trainable key/value prefixes in every attention layer, trained through an MLP",
           "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation",
           _folded_loader(peft_build("PrefixTuningConfig", fixed={"prefix_projection": True})),
           defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 512}, train={"lr": 1e-2}),
    Method("p-tuning", "additive", "input prompt embeddings produced by a trained MLP prompt encoder",
           "Liu et al. 2021, GPT Understands, Too (P-Tuning)",
           _folded_loader(peft_build("PromptEncoderConfig", fixed={"num_transformer_submodules": 1})),
           defaults={"num_virtual_tokens": 20, "encoder_hidden_size": 128, "encoder_reparameterization_type": "MLP"},
           train={"lr": 1e-2}),
]
