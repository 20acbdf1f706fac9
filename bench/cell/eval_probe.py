"""The evaluation's busiest batch (memory.eval_peak_bytes): what one forward of a cell's evaluation holds at once.

A cell's evaluation (bench/cell/evaluate.py) predicts in batches of `eval_batch_size`, taken longest first, in eval
mode and with no gradient. What one batch holds beside the weights is the batch and the most bytes alive at once in
what its forward creates, followed operator by operator as the training step's probe follows them
(bench/cell/probe.py: instrumented_step, LiveBytes). Evaluation predicts in one of three ways:

- a classifier: the batch's rows through the model, the logits in fp32 (evaluate.classifier_logits);
- rank classification (text-to-text classification, multiple choice): the log-probability of every labelled token
  of each (prompt, answer option) row, over the vocabulary in fp32 (evaluate.token_logprobs): on a decoder a row
  is a prompt and an option in one sequence, on an encoder-decoder each prompt goes through the encoder once and
  each of its options is a decoder row (evaluate.prompts_per_batch prompts a batch);
- generation (`generate`: greedy or beam search, up to the task's max_new_tokens): priced from above
  (generation_bound, GENERATION_BOUND says why it bounds the peak), measured as the longest decoding the task's
  settings allow (generation_peak: every row runs all max_new_tokens); tests/test_generation_peak.py checks the
  bound against real generate calls.

A cell measures its evaluation sets' longest batches for real (EvalProbe in bench/cell/instruments.py);
`peft-bench estimate` runs the same forward on fake tensors (bench/tools/fake_pass.fake_eval) at the shapes
`shaped_batches` makes.
"""

from __future__ import annotations

import contextlib
import string

import torch

from bench.cell.batching import collate, options_collate, to_device
from bench.cell.evaluate import classifier_logits, generate_ids, longest_batch, token_logprobs
from bench.cell.probe import instrumented_step
from bench.tasks.features import lm_example

CLASSIFIER, OPTIONS, GENERATE = "classifier", "options", "generate"
# Per row of a generation batch, what generate holds between and around its forwards (transformers' _sample and
# _beam_search), counted from above: fp32 [rows, vocabulary] score tensors (the last token's logits copied to fp32,
# their log-softmax under beam search, a logits processor's output, the beam scores added: three alive at once on
# reading the loops, one more counted) and int64 copies of the sequences, each [rows × kept, length] (input ids and
# attention mask, each with the copy a step's cat makes; beam search's running and finished sequences, each with the
# copy a step makes, their beam indices, its top-k candidates, the flattened running sequences: at most six).
SCORE_COPIES, SEQUENCE_COPIES = 4, 10
GENERATION_BOUND = (
    "generation's evaluation peak bounds generate's from above: one forward of the batch's rows × num_beams at the "
    "length generation ends at (prompt + max_new_tokens; an encoder-decoder's encoder at the prompt, its decoder at "
    "max_new_tokens), its key-value cache kept and its logits only the last token's where the model computes only "
    "those (logits_to_keep), holds at its last block the cache at full size and what that block creates on every "
    "position, while each of generate's forwards holds a cache no longer and what a block creates on fewer positions "
    "(the prefill: the prompt; a step: one token; an encoder-decoder's encoder on the rows without beams); added "
    "are one layer's keys and values (DynamicCache's cat and beam search's reordering replace a layer's tensors "
    "while the old are alive) and generate's own tensors between forwards (eval_probe.SCORE_COPIES fp32 scores over "
    "the vocabulary and SEQUENCE_COPIES int64 sequences per row)")


def way_of(head: str, task) -> str:
    """How the cell's evaluation predicts: CLASSIFIER, OPTIONS (rank classification) or GENERATE."""
    if head == "classifier":
        return CLASSIFIER
    return OPTIONS if task is not None and task.type in ("classification", "multiple_choice") else GENERATE


def _scores(model, batch: dict) -> torch.Tensor:
    return token_logprobs(model, batch)[0]


FORWARDS = {CLASSIFIER: classifier_logits, OPTIONS: _scores}


def _forward_peak(model: torch.nn.Module, batch: dict, forward, autocast, fake_mode) -> int:
    """The batch and the most bytes alive at once in what `forward(model, batch)` creates, in eval mode under
    no_grad (the model's mode restored)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            step = instrumented_step(model, batch, autocast=autocast, fake_mode=fake_mode, loss_fn=forward)
    finally:
        model.train(training)
    return step.batch_bytes + max(step.live_peaks.values(), default=0)


def eval_peak(model: torch.nn.Module, batch: dict, way: str, autocast=contextlib.nullcontext,
              fake_mode=None) -> int:
    """memory.eval_peak_bytes of one batch of a classifier or rank classification (`way`): the batch, and the most
    bytes alive at once in what the evaluation's forward creates from it, in eval mode under no_grad; on fake tensors
    with a `fake_mode` (its model's tensors already fake in it). The model's mode is restored."""
    return _forward_peak(model, batch, FORWARDS[way], autocast, fake_mode)


def _cache_layers(cache) -> list:
    """The layers of a transformers cache (an encoder-decoder's: its self- and cross-attention caches')."""
    parts = [getattr(cache, name) for name in ("self_attention_cache", "cross_attention_cache")
             if hasattr(cache, name)] or [cache]
    return [layer for part in parts for layer in getattr(part, "layers", [])]


def generation_bound(model: torch.nn.Module, batch: dict, generation: dict, eos, autocast=contextlib.nullcontext,
                     fake_mode=None) -> int:
    """memory.eval_peak_bytes of a generation batch, from above (GENERATION_BOUND): `batch` is generation_batch's
    (rows × num_beams at the length generation ends at), `eos` the end-of-sequence id or ids generate is given
    (beam search keeps max(2, 1 + their number) × num_beams candidates per example); on fake tensors with a
    `fake_mode`, as eval_peak."""
    seen = {}

    def forward(model, batch):
        keep = {"logits_to_keep": 1} if _keeps_logits(model) else {}
        out = model(**batch, use_cache=True, **keep)
        layers = [layer for layer in _cache_layers(out.past_key_values) if getattr(layer, "keys", None) is not None]
        seen["layer"] = max((layer.keys.nbytes + layer.values.nbytes for layer in layers), default=0)
        seen["vocabulary"] = out.logits.shape[-1]
        return out.logits

    held = _forward_peak(model, batch, forward, autocast, fake_mode)
    rows, beams = batch["input_ids"].shape[0], generation["num_beams"]
    length = batch["decoder_input_ids" if "decoder_input_ids" in batch else "input_ids"].shape[1]
    eos_ids = len(eos) if isinstance(eos, (list, tuple)) else int(eos is not None)
    kept = max(2, 1 + eos_ids) if beams > 1 else 1
    return held + seen["layer"] + rows * (SCORE_COPIES * 4 * seen["vocabulary"] + SEQUENCE_COPIES * 8 * kept * length)


def _keeps_logits(model) -> bool:
    """Whether generate asks `model` (a peft model's base) for the last token's logits only (logits_to_keep)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base._supports_logits_to_keep()


def generation_peak(model: torch.nn.Module, batch: dict, generation: dict, pad: int, eos,
                    autocast=contextlib.nullcontext) -> int:
    """memory.eval_peak_bytes of a generation batch as measured: the batch and the most bytes alive at once in what
    generate creates from it, every row decoding all max_new_tokens (evaluate.generate_ids, full_length)."""
    return _forward_peak(model, batch, lambda m, b: generate_ids(m, b, generation, pad, eos, full_length=True),
                         autocast, None)


def measured_eval_peak(bundle, model: torch.nn.Module, evalsets, task, batch_size: int, device, autocast) -> int:
    """memory.eval_peak_bytes as a cell measures it: the longest batch of each evaluation split and template
    (`evalsets`: the cell's, split -> sets) through the forward its evaluation predicts with (generation: decoding
    every row to max_new_tokens), the most of them. One entry from the cell's instruments, so a reader of the cell
    reads this module in one stretch."""
    way, tokenizer = way_of(bundle.head, task), bundle.tokenizer
    batches = [to_device(longest_batch(bundle, evalset, batch_size), device)
               for sets in evalsets.values() for evalset in sets]
    return max(generation_peak(model, batch, task.generation, tokenizer.pad_token_id, tokenizer.eos_token_id, autocast)
               if way == GENERATE else eval_peak(model, batch, way, autocast) for batch in batches)


def option_tokens(task, length: int) -> int:
    """The most tokens an answer option of the task can have (features._encode_target: cut at `length`, then its
    end-of-sequence token), without a tokenizer: a fixed answer text (no `{column}` in it) is at most its UTF-8
    bytes, with the space a decoder puts before it, plus one token (a word-start piece a SentencePiece model may
    emit alone; byte-level BPE and byte fallback make a token of a byte at most) and the end-of-sequence token;
    an answer that a row fills in, `length`."""
    texts = [a for prompt in task.prompts for a in (prompt.answers or task.labels or ())] or list(task.labels or ())
    if not texts or any(field is not None for a in texts for _, field, _, _ in string.Formatter().parse(a)):
        return length
    return min(length, max(len((" " + a).encode()) + 2 for a in texts))


def shaped_batches(kind: str, way: str, task, batch_size: int, length: int, pad: int, eos) -> list[dict]:
    """The estimate's batches: the longest a cell evaluating at `batch_size` with its prompts cut at `length`
    tokens (max_length) and its answer options at option_tokens can make, one per number of answer options its
    templates have (an encoder-decoder's prompts a batch depend on it); for generation, generation_batch's. Token
    ids are the pad id, the last of each the end-of-sequence token where the model has one (`eos`). The attention
    mask is a padded batch's, as a cell's longest-first batches are: its last row's last position masked, so the
    forward builds the attention mask a padded batch's does (an all-ones one it skips, on fake tensors as on real
    ones: bench/tools/fake_pass._read_values)."""
    def tokens(n: int) -> list[int]:
        return [pad] * (n - 1) + [eos if isinstance(eos, int) else pad]

    prompt = tokens(length)
    if way == GENERATE:
        batches = [generation_batch(kind, batch_size, length, task.generation, pad, eos)]
    elif way == CLASSIFIER:
        batches = [collate([{"input_ids": prompt}] * batch_size, pad)]
    else:
        option = tokens(option_tokens(task, length))
        batches = [options_collate([prompt] * max(1, batch_size // n), [[option] * n] * max(1, batch_size // n), pad)
                   for n in task.answer_counts()] if kind == "encoder-decoder" else \
            [collate([lm_example(kind, prompt, option)] * batch_size, pad)]
    for batch in batches:
        batch["attention_mask"][-1, -1] = 0
    return batches


def generation_batch(kind: str, rows: int, length: int, generation: dict, pad: int, eos) -> dict:
    """generation_bound's batch for `rows` prompts of `length` tokens: rows × num_beams rows at the length generation
    ends at, a decoder's prompt + max_new_tokens tokens, an encoder-decoder's prompt and max_new_tokens decoder tokens
    (ids as shaped_batches')."""
    steps, rows = generation["max_new_tokens"], rows * generation["num_beams"]
    last = eos if isinstance(eos, int) else pad
    if kind == "encoder-decoder":
        batch = collate([{"input_ids": [pad] * (length - 1) + [last]}] * rows, pad)
        return {**batch, "decoder_input_ids": torch.full((rows, steps), pad, dtype=torch.long)}
    return collate([{"input_ids": [pad] * (length + steps - 1) + [last]}] * rows, pad)
