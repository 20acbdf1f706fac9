"""The evaluation's busiest batch (memory.eval_peak_bytes): what one forward of a cell's evaluation holds at once.

A cell's evaluation (bench/cell/evaluate.py) predicts in batches of `eval_batch_size`, taken longest first, in eval
mode and with no gradient. What one batch holds beside the weights is the batch and the most bytes alive at once in
what its forward creates, followed operator by operator as the training step's probe follows them
(bench/cell/probe.py: instrumented_step, LiveBytes). Two of evaluation's three ways of predicting are modelled:

- a classifier: the batch's rows through the model, the logits in fp32 (evaluate.classifier_logits);
- rank classification (text-to-text classification, multiple choice): the log-probability of every labelled token
  of each (prompt, answer option) row, over the vocabulary in fp32 (evaluate.token_logprobs): on a decoder a row
  is a prompt and an option in one sequence, on an encoder-decoder each prompt goes through the encoder once and
  each of its options is a decoder row (evaluate.prompts_per_batch prompts a batch);
- generation is not (UNMODELLED): `generate` decodes step by step until every row has ended, which it reads off
  the tokens' values, and its cache of keys and values grows with every token; the figure is then null.

A cell measures its evaluation sets' longest batches for real (EvalProbe in bench/cell/instruments.py);
`peft-bench estimate` runs the same forward on fake tensors (bench/tools/fake_pass.fake_eval) at the shapes
`shaped_batches` makes.
"""

from __future__ import annotations

import contextlib
import string

import torch

from bench.cell.batching import collate, options_collate
from bench.cell.evaluate import classifier_logits, token_logprobs
from bench.cell.probe import instrumented_step
from bench.tasks.features import lm_example

CLASSIFIER, OPTIONS = "classifier", "options"
UNMODELLED = ("generation is not modelled: generate decodes until every row has ended, which it reads off the "
              "tokens' values, and its key-value cache grows with each token")


def way_of(head: str, task) -> str | None:
    """How the cell's evaluation predicts: CLASSIFIER, OPTIONS (rank classification), or None (generation)."""
    if head == "classifier":
        return CLASSIFIER
    return OPTIONS if task is not None and task.type in ("classification", "multiple_choice") else None


def _scores(model, batch: dict) -> torch.Tensor:
    return token_logprobs(model, batch)[0]


FORWARDS = {CLASSIFIER: classifier_logits, OPTIONS: _scores}


def eval_peak(model: torch.nn.Module, batch: dict, way: str, autocast=contextlib.nullcontext,
              fake_mode=None) -> int:
    """memory.eval_peak_bytes of one batch: the batch, and the most bytes alive at once in what the evaluation's
    forward (`way`) creates from it, in eval mode under no_grad; on fake tensors with a `fake_mode` (its model's
    tensors already fake in it). The model's mode is restored."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            step = instrumented_step(model, batch, autocast=autocast, fake_mode=fake_mode, loss_fn=FORWARDS[way])
    finally:
        model.train(training)
    return step.batch_bytes + max(step.live_peaks.values(), default=0)


def answer_counts(task) -> list[int]:
    """The distinct numbers of answer options of the task's templates (its label names where a template gives
    none), as TaskSpec.answers lists them."""
    return sorted({len(prompt.answers or task.labels or ()) for prompt in task.prompts}) or [len(task.labels or ())]


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
    templates have (an encoder-decoder's prompts a batch depend on it). Token ids are the pad id, the last of each
    the end-of-sequence token where the model has one (`eos`)."""
    def tokens(n: int) -> list[int]:
        return [pad] * (n - 1) + [eos if isinstance(eos, int) else pad]

    prompt = tokens(length)
    if way == CLASSIFIER:
        return [collate([{"input_ids": prompt}] * batch_size, pad)]
    option = tokens(option_tokens(task, length))
    if kind == "encoder-decoder":
        return [options_collate([prompt] * max(1, batch_size // n), [[option] * n] * max(1, batch_size // n), pad)
                for n in answer_counts(task)]
    return [collate([lm_example(kind, prompt, option)] * batch_size, pad)]
