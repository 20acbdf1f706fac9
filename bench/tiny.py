"""Tiny offline models: configs of real architectures at toy size, and a tokenizer made on the spot.

The tokenizer is a byte-level BPE trained on the synthetic tasks' lexicon, so every synthetic word is
one token while any other text still encodes (as bytes). Weights come from a fixed init seed, so a
tiny model is the same "pretrained" model in every cell, like a hub checkpoint.
"""

from __future__ import annotations

import functools
import hashlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bench.archs import ARCHS
from bench.tasks.synthetic import lexicon

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
PAD, BOS, EOS = 0, 1, 2
VOCAB_SIZE = 1024
INIT_SEED = 0
WIDTH, DEPTH, HEADS, FFN = 64, 2, 4, 128


@functools.lru_cache(maxsize=1)
def tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Each word repeated so its merges outrank accidental pairs; sorted for a deterministic corpus.
    corpus = [" ".join(sorted(set(lexicon())))] * 64
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", BOS), ("</s>", EOS)],
    )
    return tok.to_str()


@functools.lru_cache(maxsize=1)
def tokenizer_sha256() -> str:
    return hashlib.sha256(tokenizer_json().encode()).hexdigest()[:16]


def tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json()),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
    )


def config(arch: str, vocab_size: int):
    """A real architecture's config at toy size (bench/archs.py; random init; tokenizer vocabulary)."""
    import transformers as tf

    if arch not in ARCHS:
        raise ValueError(f"no tiny config for architecture '{arch}'")
    spec = ARCHS[arch]
    return getattr(tf, spec.config_class)(**spec.tiny(WIDTH, DEPTH, HEADS, FFN), pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                                          vocab_size=vocab_size)
