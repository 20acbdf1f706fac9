"""Forgetting on an encoder: its masked-LM loss on the general text (forgetting.* with objective `masked`).

An encoder cell trains a sequence-classification model, which has no LM head. Its checkpoint's masked-LM head
(BERT's `cls`, RoBERTa's `lm_head`: transform, LayerNorm, output bias, and the output matrix, tied to the
checkpoint's word embeddings) is loaded beside it, frozen, and reads the last hidden states of the cell's model:
the body changes as the method trains it, the head stays as the checkpoint has it. A checkpoint without that
head's weights (a sentence-embedding model saved as a bare BertModel, as MiniLM-L6 is), a tiny model (no
checkpoint: its weights are a fixed random init) and a tokenizer without a mask token give no head: null figures.

Which tokens are masked is fixed by the text and FORGETTING_MASK_SEED alone: the same positions before and after
training, in every cell and on every device.
"""

from __future__ import annotations

import random

import torch

from bench.cell.batching import IGNORE
from bench.figures import FORGETTING_CHUNK_TOKENS, FORGETTING_MASK_SEED
from bench.models import pretrained_ref
from bench.tasks.masked_lm import masked_count


def masked_pieces(ids: list[int], tokenizer) -> list[dict]:
    """Consecutive pieces of FORGETTING_CHUNK_TOKENS − 2 text ids (the last may be shorter), each wrapped as
    [CLS] piece [SEP] (the tokenizer's cls and sep tokens, its bos and eos where it has none: RoBERTa's <s>, </s>),
    so a piece is at most FORGETTING_CHUNK_TOKENS long. In each, masked_count(n) of its n text positions, drawn
    by random.Random(FORGETTING_MASK_SEED).sample over the pieces in order, hold the mask token in input_ids and
    their original id in labels (every other label IGNORE). Every chosen position is masked (no 80/10/10
    replacement as in BERT's training): the loss is that of predicting each from the rest of its piece."""
    rng = random.Random(FORGETTING_MASK_SEED)
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    body = FORGETTING_CHUNK_TOKENS - 2
    pieces = []
    for start in range(0, len(ids), body):
        piece = ids[start: start + body]
        chosen = set(rng.sample(range(len(piece)), masked_count(len(piece))))
        inputs = [tokenizer.mask_token_id if i in chosen else t for i, t in enumerate(piece)]
        labels = [t if i in chosen else IGNORE for i, t in enumerate(piece)]
        pieces.append({"input_ids": [first, *inputs, last], "labels": [IGNORE, *labels, IGNORE]})
    return pieces


def checkpoint_mlm_head(bundle) -> torch.nn.Module | None:
    """The masked-LM head of the encoder's checkpoint, frozen, in eval mode, on the model's device and in its
    dtype; None when there is none (the module docstring says when)."""
    import transformers as tf

    ref = pretrained_ref(bundle.spec)
    if ref is None or bundle.tokenizer.mask_token_id is None:
        return None
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()  # a checkpoint without the head is an answer here, not a warning for the log
    try:
        mlm, info = tf.AutoModelForMaskedLM.from_pretrained(ref, revision=bundle.spec.revision,
                                                            output_loading_info=True)
    finally:
        tf.logging.set_verbosity(verbosity)
    heads = [name for name, _ in mlm.named_children() if name != mlm.base_model_prefix]
    if len(heads) != 1 or any(key.split(".")[0] in heads for key in info["missing_keys"]):
        return None  # the checkpoint does not hold the head: a fresh random one would measure nothing
    weight = next(bundle.model.parameters())
    head = getattr(mlm, heads[0]).to(device=weight.device, dtype=weight.dtype).eval()
    head.requires_grad_(False)
    return head


def masked_token_logprobs(model, head: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The log-probability of each masked token (0 elsewhere) by `head` on the model's last hidden states at the
    piece's positions (the last ones: a soft prompt's virtual tokens come first), log-softmax in fp32."""
    labels = batch["labels"]
    states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=True).hidden_states[-1]
    logp = torch.log_softmax(head(states[:, -labels.shape[1]:]).float(), dim=-1)
    mask = labels != IGNORE
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
