"""Forgetting: the model's LM loss on a fixed general text, before and after training (forgetting.* in
bench/figures.py, which defines exactly what is computed).

The text is the packaged bench/texts/general.txt, or the file of the train setting `forgetting_text`
(bench/config.py checks it before any cell runs). A model predicting with its LM head (a decoder, or an
encoder-decoder) has a loss on text; an encoder has its checkpoint's masked-LM loss where the checkpoint has that
head (bench/cell/masked_lm.py); otherwise (a decoder or encoder-decoder under a classifier head) the figures stay
null.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.cell.batching import collate, to_device
from bench.cell.evaluate import token_logprobs
from bench.cell.masked_lm import checkpoint_mlm_head, masked_pieces, masked_token_logprobs
from bench.figures import FORGETTING_CHUNK_TOKENS
from bench.tasks.features import lm_example

DEFAULT_TEXT = Path(__file__).resolve().parent.parent / "texts" / "general.txt"
OBJECTIVES = {"decoder": "causal", "encoder-decoder": "prefix", "encoder": "masked"}


@dataclass(frozen=True)
class Text:
    """The general text as a model's pieces to score: each an lm_example (input ids, labels)."""

    pieces: list[dict]
    objective: str
    sha256: str
    mlm_head: torch.nn.Module | None = None  # an encoder's: its checkpoint's masked-LM head

    @property
    def tokens(self) -> int:
        """Predicted tokens: every label that is not ignored (a decoder's first token of a piece is input only)."""
        return sum(sum(t >= 0 for t in p["labels"]) for p in self.pieces)


def pieces_of(ids: list[int], kind: str) -> list[dict]:
    """Consecutive pieces of FORGETTING_CHUNK_TOKENS ids (a last, shorter piece kept from 2 ids), each as a
    training example of the model's kind: a decoder's whole piece, every id after the first predicted; an
    encoder-decoder's first ⌈n/2⌉ ids read by the encoder, the other ⌊n/2⌋ predicted by the decoder."""
    pieces = []
    for start in range(0, len(ids), FORGETTING_CHUNK_TOKENS):
        piece = ids[start: start + FORGETTING_CHUNK_TOKENS]
        if len(piece) < 2:
            continue
        split = 1 if kind == "decoder" else (len(piece) + 1) // 2
        pieces.append(lm_example(kind, piece[:split], piece[split:]))
    return pieces


def general_text(bundle, path: str | None) -> Text | None:
    """The text tokenised for `bundle`'s model; None where no LM head scores it (the module docstring)."""
    head = checkpoint_mlm_head(bundle) if bundle.kind == "encoder" else None
    if bundle.head != "lm" and head is None:
        return None
    data = Path(path or DEFAULT_TEXT).read_bytes()
    ids = bundle.tokenizer(data.decode("utf-8"), add_special_tokens=False)["input_ids"]
    pieces = masked_pieces(ids, bundle.tokenizer) if head is not None else pieces_of(ids, bundle.kind)
    if not pieces:
        raise ValueError(f"{path}: the forgetting text is {len(ids)} token(s) long; it needs at least 2")
    return Text(pieces, OBJECTIVES[bundle.kind], hashlib.sha256(data).hexdigest()[:16], head)


@torch.no_grad()
def lm_loss(model, text: Text, pad_id: int, batch_size: int, device, autocast=contextlib.nullcontext) -> float:
    """The mean cross-entropy (nats) over every predicted token of `text`, the model in eval mode (its mode
    restored after)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for start in range(0, len(text.pieces), batch_size):
            batch = to_device(collate(text.pieces[start: start + batch_size], pad_id), device)
            with autocast():
                if text.mlm_head is not None:
                    token_logp = masked_token_logprobs(model, text.mlm_head, batch)
                else:
                    token_logp, _ = token_logprobs(model, batch)
            total -= token_logp.sum(dtype=torch.float64)
    finally:
        model.train(was_training)
    return total.item() / text.tokens
