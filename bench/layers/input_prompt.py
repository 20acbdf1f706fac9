"""T-Few's prompt tuning (r-three/t-few src/models/prompt_tuning.py): trainable embeddings prepended to an
encoder-decoder's encoder input and to its decoder input, each started from rows of the vocabulary embedding.

The prompts are put in by hooks on the encoder and decoder stacks, not by a wrapper around the model's forward, so
every path that runs a stack gets them: the model's forward, the encoder called on its own (rank classification
encodes each prompt once, bench/cell/evaluate.py), generate's encoder pass and its decoding steps.
- Encoder: the prompt goes in front of the token embeddings and the attention mask is opened to it. Its output
  keeps the prompt positions (as T-Few's), so the decoder's cross-attention reads them.
- Decoder: the encoder mask gets columns for the encoder prompt where it is narrower than the encoder's states;
  the decoder prompt goes in front of the decoder input, its mask opened to it, and the causal mask lets every
  token see the whole prompt and a prompt position the prompt positions before it. The prompt positions are cut
  from the output, so logits line up with the labels as without a prompt and no loss reads a prompt position.
  With a KV cache (generation) the prompt enters at the first step and is in the cache after that.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

# T-Few samples each prompt's rows from ids 3..5002: "the 5000 most common regular tokens" of T5's vocabulary
# (SentencePiece orders it by frequency; 0, 1, 2 are pad, eos and unk). A smaller vocabulary: 3 to its end.
VOCABULARY_IDS = (3, 5003)


class InputPrompt(nn.Module):
    """Trainable embeddings in front of a stack's input, [length, d_model], a child of the stack they prompt."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(table)
        self.cut_from_output = False  # set by the decoder's pre-hook when this call's input carries the prompt

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def prepend(self, embeds: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.weight[None].expand(embeds.shape[0], -1, -1), embeds], dim=1)


def vocabulary_rows(embedding: nn.Embedding, length: int) -> torch.Tensor:
    """`length` rows of the embedding at ids drawn uniformly as T-Few draws them (torch.randint on the CPU
    generator, so a seed gives T-Few's rows)."""
    start, end = VOCABULARY_IDS
    ids = torch.randint(start, min(end, embedding.num_embeddings), (length,), device="cpu")
    return embedding.weight.detach()[ids.to(embedding.weight.device)].clone()


def add_prompts(model: nn.Module, length: int, decoder_prompt: bool) -> list[InputPrompt]:
    """Prompt the encoder (and with `decoder_prompt` the decoder) of an encoder-decoder; returns the prompts."""
    encoder, decoder = model.get_encoder(), model.get_decoder()
    prompts = []
    for stack, hooked in ((encoder, True), (decoder, decoder_prompt)):
        if hooked:  # drawn encoder first, as T-Few builds its wrappers
            prompt = InputPrompt(vocabulary_rows(stack.get_input_embeddings(), length))
            stack.add_module("bench_prompt", prompt)
            prompts.append(prompt)
    encoder.register_forward_pre_hook(_prompt_encoder_input, with_kwargs=True)
    decoder.register_forward_pre_hook(_prompt_decoder_input, with_kwargs=True)
    if decoder_prompt:
        decoder.register_forward_hook(_cut_decoder_prompt)
    return prompts


def _by_name(stack: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The stack's forward arguments by name (transformers passes them by keyword; a positional call too)."""
    return {**dict(zip(inspect.signature(stack.forward).parameters, args)), **kwargs}


def _opened(mask: torch.Tensor | None, columns: int) -> torch.Tensor | None:
    """A [batch, length] padding mask with `columns` attended positions in front (None: everything is attended)."""
    if mask is None:
        return None
    return torch.cat([mask.new_ones(mask.shape[0], columns), mask], dim=1)


def _embedded(stack: nn.Module, kwargs: dict) -> torch.Tensor:
    embeds = kwargs.get("inputs_embeds")
    return stack.embed_tokens(kwargs["input_ids"]) if embeds is None else embeds


def _prompt_encoder_input(stack, args, kwargs):
    kwargs = _by_name(stack, args, kwargs)
    prompt = stack.bench_prompt
    kwargs["inputs_embeds"], kwargs["input_ids"] = prompt.prepend(_embedded(stack, kwargs)), None
    kwargs["attention_mask"] = _opened(kwargs.get("attention_mask"), prompt.length)
    return (), kwargs


def _prompt_decoder_input(stack, args, kwargs):
    kwargs = _by_name(stack, args, kwargs)
    states, cross_mask = kwargs.get("encoder_hidden_states"), kwargs.get("encoder_attention_mask")
    if states is not None and cross_mask is not None and cross_mask.shape[1] < states.shape[1]:
        # the model passes its input's mask; the encoder's states start with the encoder prompt
        kwargs["encoder_attention_mask"] = _opened(cross_mask, states.shape[1] - cross_mask.shape[1])
    prompt = getattr(stack, "bench_prompt", None)
    if prompt is None:
        return (), kwargs
    embeds, mask, cache = _embedded(stack, kwargs), kwargs.get("attention_mask"), kwargs.get("cache")
    past = cache.get_seq_length() if cache is not None else 0
    if past == 0:
        kwargs["inputs_embeds"], kwargs["input_ids"] = prompt.prepend(embeds), None
        kwargs["attention_mask"] = _opened(mask, prompt.length)
        prompt.cut_from_output = True
    elif mask is not None and mask.shape[1] < past + embeds.shape[1]:  # a mask over the tokens only
        kwargs["attention_mask"] = _opened(mask, past + embeds.shape[1] - mask.shape[1])
    return (), kwargs


def _cut_decoder_prompt(stack, args, output):
    prompt = stack.bench_prompt
    if prompt.cut_from_output:
        prompt.cut_from_output = False
        output.last_hidden_state = output.last_hidden_state[:, prompt.length:]
    return output
