"""Evaluation: predictions for an EvalSet, then the task's metrics.

Three ways to predict, by head and task type:
- classifier head: argmax of the logits (or the single output, for regression);
- rank classification (text-to-text classification and multiple choice): the answer option whose
  tokens have the highest total log-likelihood given the prompt (or mean per token, with the task's
  length_normalize);
- generation: greedy or beam search, decoded without special tokens.
A task with several templates is evaluated with each; its score is the median over templates (T-Few).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable

import torch

from bench.cell.batching import collate, options_collate, to_device
from bench.methods.peft_common import cache_named_for_peft
from bench.models import is_encoder_decoder
from bench.tasks import metrics
from bench.tasks.features import IGNORE, EvalSet, lm_example
from bench.tasks.spec import TaskSpec


def timed_examples(n: int, batch_size: int) -> int:
    """How many of an evaluation's first examples it predicts as a group of their own: two batches (all,
    when fewer). The final evaluation times them (time.infer_examples_per_s, bench/cell/measure.py)."""
    return min(n, 2 * batch_size)


def _longest_first(items: list, size: int, length: Callable, predict_batch: Callable,
                   same_length: bool = False) -> list:
    """predict_batch over batches of up to `size` items taken longest first (ties in their order), so a
    batch pads little and the longest comes first (an out-of-memory shows at once); the outputs in the items'
    order. `same_length`: a batch never mixes lengths, so nothing is padded."""
    order = sorted(range(len(items)), key=lambda i: -length(items[i]))
    out: list = [None] * len(items)
    start = 0
    while start < len(order):
        chunk = order[start: start + size]
        if same_length:  # sorted: the items as long as the first are a prefix of the chunk
            chunk = [i for i in chunk if length(items[i]) == length(items[chunk[0]])]
        for i, y in zip(chunk, predict_batch([items[i] for i in chunk]), strict=True):
            out[i] = y
        start += len(chunk)
    return out


def padding_moves_positions(bundle, model) -> bool:
    """peft's soft prompts on a decoder (prompt tuning, p-tuning, its prefix tuning) drop the position ids
    (it warns so, and bench.cell.recipe silences the warning), so a left-padded row's tokens are generated
    from other positions than alone. There, rows of different lengths must not share a generation batch.
    (Classifier and rank-classification batches pad on the right, after every token a causal model reads.)"""
    config = getattr(model, "active_peft_config", None)
    return bundle.kind == "decoder" and bool(getattr(config, "is_prompt_learning", False))


@torch.no_grad()
def predict(bundle, model, evalset: EvalSet, task: TaskSpec, batch_size: int, device,
            autocast=contextlib.nullcontext, clock=contextlib.nullcontext) -> list:
    """Predictions for every example of `evalset`, in its order. The first timed_examples(n, batch_size)
    examples are predicted first, inside `clock()` (the final evaluation times them there), then the rest;
    each group in batches of `batch_size` taken longest first. Every evaluation of a set thus makes the
    same batches, and they pad little (benchmarks/eval_order.py measures what that saves)."""
    model.eval()
    head = timed_examples(len(evalset.features), batch_size)
    with clock():
        preds = _predict_group(bundle, model, evalset.rows(0, head), task, batch_size, device, autocast)
    if head < len(evalset.features):
        preds += _predict_group(bundle, model, evalset.rows(head, None), task, batch_size, device, autocast)
    return preds


def classifier_logits(model, batch: dict) -> torch.Tensor:
    """A classifier's evaluation forward: its logits, in fp32."""
    return model(**batch).logits.float()


def _input_length(feature: dict) -> int:
    return len(feature["input_ids"])


def _prompt_length(example: tuple) -> int:  # an encoder-decoder's (prompt feature, options) example
    return len(example[0]["input_ids"])


def _pair_length(pair: dict) -> int:
    return len(pair["input_ids"]) + len(pair["labels"])


def _options_batch(chunk: list[tuple], pad: int) -> dict:
    return options_collate([f["input_ids"] for f, _ in chunk], [options for _, options in chunk], pad)


def prompts_per_batch(choices: list[list], batch_size: int) -> int:
    """An encoder-decoder's prompts per rank-classification batch: as many as keep its option rows within the
    batch size."""
    return max(1, batch_size // max(len(options) for options in choices))


def option_pairs(kind: str, evalset: EvalSet) -> list[dict]:
    """A decoder's rank-classification rows: each (prompt, answer option) of every example, in order."""
    return [lm_example(kind, f["input_ids"], c) for f, options in zip(evalset.features, evalset.choices)
            for c in options]


def longest_batch(bundle, evalset: EvalSet, batch_size: int) -> dict:
    """The batch of the evaluation's longest examples, collated as predict collates a batch (its busiest, as
    bench/cell/eval_probe.py measures it); for generation, its longest prompts, padded as generate's (left on a
    decoder). Where padding_moves_positions, predict's first batch may be fewer of them: this one is no smaller."""
    pad = bundle.tokenizer.pad_token_id
    if bundle.head == "classifier" or evalset.choices is None:
        longest = sorted(evalset.features, key=lambda f: -_input_length(f))[:batch_size]
        return collate(longest, pad, left=bundle.head != "classifier" and bundle.kind == "decoder")
    if bundle.kind == "encoder-decoder":
        examples = sorted(zip(evalset.features, evalset.choices), key=lambda e: -_prompt_length(e))
        return _options_batch(examples[:prompts_per_batch(evalset.choices, batch_size)], pad)
    return collate(sorted(option_pairs(bundle.kind, evalset), key=lambda p: -_pair_length(p))[:batch_size], pad)


def _predict_group(bundle, model, evalset: EvalSet, task: TaskSpec, batch_size: int, device, autocast) -> list:
    pad = bundle.tokenizer.pad_token_id
    if bundle.head == "classifier":
        def classify(chunk):
            with autocast():
                logits = classifier_logits(model, to_device(collate(chunk, pad), device))
            return logits.squeeze(-1).tolist() if task.type == "regression" else logits.argmax(-1).tolist()

        return _longest_first(evalset.features, batch_size, _input_length, classify)
    if evalset.choices is not None and bundle.kind == "encoder-decoder":
        def score_options(chunk):  # each prompt through the encoder once, its options through the decoder
            batch = _options_batch(chunk, pad)
            with autocast():
                flat = sequence_logprob(model, to_device(batch, device), task.length_normalize)
            rows, start = [], 0
            for _, options in chunk:
                rows.append(flat[start: start + len(options)])
                start += len(options)
            return rows

        examples = list(zip(evalset.features, evalset.choices))
        scores = _longest_first(examples, prompts_per_batch(evalset.choices, batch_size), _prompt_length,
                                score_options)
        return [max(range(len(row)), key=row.__getitem__) for row in scores]
    if evalset.choices is not None:
        def score(chunk):
            with autocast():
                return sequence_logprob(model, to_device(collate(chunk, pad), device), task.length_normalize)

        scores = _longest_first(option_pairs(bundle.kind, evalset), batch_size, _pair_length, score)
        preds, start = [], 0
        for options in evalset.choices:
            row = scores[start: start + len(options)]
            preds.append(max(range(len(options)), key=row.__getitem__))
            start += len(options)
        return preds
    left = bundle.kind == "decoder"  # decoders continue the prompt, so pad on the left

    def generate(chunk):
        batch = to_device(collate(chunk, pad, left=left), device)
        with autocast():
            out = generate_ids(model, batch, task.generation, pad, bundle.tokenizer.eos_token_id)
        if left:
            out = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in bundle.tokenizer.batch_decode(out, skip_special_tokens=True)]

    return _longest_first(evalset.features, batch_size, _input_length, generate,
                          padding_moves_positions(bundle, model))


def generate_ids(model, batch: dict, generation: dict, pad: int, eos, full_length: bool = False) -> torch.Tensor:
    """Generation's decoding of a batch: greedy or beam search as the task's `generation` settings say, up to their
    max_new_tokens. `full_length`: every row runs all max_new_tokens (its end-of-sequence token forbidden until
    then), the longest decoding the settings allow (bench/cell/eval_probe.py measures it)."""
    steps = generation["max_new_tokens"]
    with cache_named_for_peft(model):  # peft's soft prompts read the cache (bench/methods/peft_common.py)
        return model.generate(**batch, max_new_tokens=steps, num_beams=generation["num_beams"], do_sample=False,
                              pad_token_id=pad, eos_token_id=eos, **({"min_new_tokens": steps} if full_length else {}))


def encodes_once(model) -> bool:
    """Whether an encoder-decoder's encoder can run apart from its forward, once per prompt: not under peft's soft
    prompts (prompt tuning, p-tuning, its prefix tuning), which peft's own forward adds to the encoder's input."""
    config = getattr(model, "active_peft_config", None)
    return is_encoder_decoder(model) and not getattr(config, "is_prompt_learning", False)


def token_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each labelled token (labels != -100) under the model, and the label mask.

    Works for encoder-decoders (labels are the decoder's targets) and decoders (labels align with
    input_ids; position t predicts token t+1), also when prompt tuning prepends virtual tokens. An
    encoder-decoder batch with `encoder_rows` (batching.options_collate) holds each prompt once: the encoder runs
    on them once and its states are repeated along encoder_rows (where encodes_once; else the prompts are).
    """
    batch = dict(batch)
    labels = batch.pop("labels")
    rows = batch.pop("encoder_rows", None)
    if rows is not None and encodes_once(model):
        from transformers.modeling_outputs import BaseModelOutput

        states = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        batch = {"encoder_outputs": BaseModelOutput(last_hidden_state=states.index_select(0, rows)),
                 "attention_mask": batch["attention_mask"].index_select(0, rows)}
    elif rows is not None:
        batch = {key: value.index_select(0, rows) for key, value in batch.items()}
    decoder_only = not is_encoder_decoder(model)
    # encoder-decoders need the labels to build decoder inputs; decoders read them from input_ids. No key-value
    # cache: nothing decodes after this forward, and the cache would hold every layer's keys and values at once
    logits = model(**batch, use_cache=False, **({} if decoder_only else {"labels": labels})).logits
    if logits.shape[1] != labels.shape[1]:  # decoder: prompt tuning prepends virtual tokens
        logits = logits[:, -labels.shape[1]:]
    if decoder_only:
        logits, labels = logits[:, :-1], labels[:, 1:]
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    return logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask, mask


def sequence_logprob(model, batch: dict, length_normalize: bool = False) -> list[float]:
    """Log-likelihood of each row's labelled tokens: the sum, or the mean per token."""
    token_logp, mask = token_logprobs(model, batch)
    total = token_logp.sum(-1)
    if length_normalize:
        total = total / mask.sum(-1).clamp(min=1)
    return total.tolist()


def evaluate(bundle, model, evalset: EvalSet, task: TaskSpec, batch_size: int, device,
             autocast=contextlib.nullcontext, predictor: Callable = predict) -> dict:
    """{metric: value} on the 0-100 scale, for the task's metrics (predictions by `predictor`, which
    takes predict's arguments)."""
    preds = predictor(bundle, model, evalset, task, batch_size, device, autocast)
    return metrics.compute(task.metrics, preds, evalset.gold)


def evaluate_all(bundle, model, evalsets: dict[str, list[EvalSet]], task: TaskSpec, batch_size: int, device,
                 autocast=contextlib.nullcontext, predict_main: Callable = predict,
                 before_split: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """Scores over every evaluation split and template.

    Returns ({metric: median over templates} for the main split plus {metric_<split>: ...} for more
    splits (MNLI's mismatched), [{"split", "template", "metrics"}] for every evaluation).
    `predict_main` predicts the main split under its first template (a cell times it there:
    bench.cell.measure.TimedPrediction); `predict` predicts every other evaluation. `before_split(name)` runs
    before each split is scored (MAD-X swaps that language's adapters in: bench/cell/languages.py).
    """
    merged: dict = {}
    details = []
    for split, sets in evalsets.items():
        if before_split is not None:
            before_split(split)
        runs = [evaluate(bundle, model, es, task, batch_size, device, autocast,
                         predict_main if split == "" and i == 0 else predict) for i, es in enumerate(sets)]
        details += [{"split": split or "main", "template": i, "metrics": r} for i, r in enumerate(runs)]
        for name in task.metrics:
            values = [r[name] for r in runs if r[name] is not None]
            merged[f"{name}_{split}" if split else name] = statistics.median(values) if values else None
    return merged, details
