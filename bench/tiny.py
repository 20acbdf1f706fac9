"""Tiny offline models: configs of real architectures at toy size, and a tokenizer made on the spot.

The tokenizer is a byte-level BPE trained on the synthetic tasks' lexicon, so every synthetic word is
one token while any other text still encodes (as bytes). Weights come from a fixed init seed, so a
tiny model is the same "pretrained" model in every cell, like a hub checkpoint.
"""

from __future__ import annotations

import functools
import hashlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

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


def tokenizer_sha256() -> str:
    return hashlib.sha256(tokenizer_json().encode()).hexdigest()[:16]


def tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json()),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
    )


def config(arch: str, vocab_size: int):
    """A real architecture's config at toy size (random init; tokenizer vocabulary)."""
    import transformers as tf

    ids = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, vocab_size=vocab_size)
    if arch == "roberta":
        return tf.RobertaConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                intermediate_size=FFN, max_position_embeddings=514, type_vocab_size=1, **ids)
    if arch == "bert":
        return tf.BertConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                             intermediate_size=FFN, max_position_embeddings=512, **ids)
    if arch == "t5":
        return tf.T5Config(d_model=WIDTH, d_kv=WIDTH // HEADS, d_ff=FFN, num_layers=DEPTH, num_heads=HEADS,
                           decoder_start_token_id=PAD, **ids)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=WIDTH, n_layer=DEPTH, n_head=HEADS, n_inner=FFN, n_positions=512, **ids)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                              num_key_value_heads=HEADS // 2, intermediate_size=FFN,
                              max_position_embeddings=512, **ids)
    raise ValueError(f"no tiny config for architecture '{arch}'")
