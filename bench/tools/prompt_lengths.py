"""The sequence length a few-shot cell is priced at (`run --dry-run`): its task's prompts as measured, not max_length.

A few-shot cell (its training settings name `shots`: trained on a few rows, or shown them in context) reads its
task's templates filled with a row, most often far shorter than max_length. Its **priced length** is measured on
the task's own rows with the cell's own tokenizer: the mean, over the first MEASURED_ROWS rows of the training
split and every template, of one example's tokens as the cell reads it (bench/tasks/features.py's encoding, each
cut at max_length), rounded up and capped at max_length. One example's tokens: a classifier's text (pair); a
decoder-only model's filled template and gold answer in one sequence; for an encoder-decoder the longer of its
prompt (the encoder's) and its answer (the decoder's), since `estimate` runs one length through both stacks: an
upper bound, tight for the encoder. In-context learning shows `shots` solved examples before each query: (shots
+ 1) examples' tokens, capped at max_length. A training step is then priced at batch_size sequences of that
length, and an evaluation pass (plan_cost.eval_flops: one per answer option) at one.

A T-Few-objective cell (`objective: tfew`) steps on batch_size examples with every answer option a row
(bench/tools/priced_task.py options_batch), so its prompts and options are measured apart, on the same rows and
templates: the prompt's mean tokens (the encoder's row; a decoder's from its <s>) and the mean over examples of an
example's longest answer option's tokens (option_tokens: a step pads each option row to its batch's longest option),
each rounded up and capped at max_length. On an encoder-decoder the encoder rows are priced at the prompt's length and
the decoder rows at the option's; on a decoder each row at the two summed (capped at max_length), the option its last
tokens. The option length travels on the priced cell (Cell.option_tokens) into its objective (priced_task
cell_objective), part of the step's shape (plan_cost.shape_of). Where the rows are not here, prompt and options stay
at max_length, and the line says so.

Only rows already on this machine are measured (synthetic tasks, local files, --data-dir, a task's manual files):
the plan downloads no dataset. Where the rows or the tokenizer cannot be read, the cell is priced at max_length
(a tfew cell's answer options too), an upper bound, and its line says why.

A measurement is kept in the disk cache with the plan's prices (kind `plan`, plan_cache_key), so a dry-run of the same
plan again loads no tokenizer (transformers alone takes most of a second to import): keyed by the task's definition
(its templates), its data files' sizes and times, the model's identity (the tiny tokenizer's digest, a hub
checkpoint's id and revision), max_length, the tokenizer packages' versions and this harness's source. A model given
by a folder or hub id is measured afresh each time, as its prices are.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import NamedTuple

MEASURED_ROWS = 256  # enough for a stable mean (a few-shot task's prompts vary by tens of tokens), fast to tokenise


def plan_cache_key(model_name: str, packages: tuple[str, ...], **subject) -> dict | None:
    """The disk cache's key (bench.tasks.cache, kind `plan`) of what a plan computed for a model: `subject`, the
    versions of the packages that compute it (null: not installed) and this harness's source. None for a model given
    by a folder or hub id (not a registered name): what it is may change under the same name, so it is computed
    afresh."""
    import importlib.metadata as md

    from bench.models import REGISTRY
    from bench.tasks import cache

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:  # an optional package (bitsandbytes): the plan says what it lacks
            return None

    if model_name not in REGISTRY:
        return None
    return {**subject, "versions": {name: version(name) for name in packages}, "source": cache.source_digest()}


class Measured(NamedTuple):
    """Mean token counts of the task's examples as the model reads them (each cut at max_length as a cell cuts it):
    one example (sequence_tokens), and where the task's examples have answer options (text-to-text classification
    and multiple choice; else None) a prompt alone and an example's longest answer option (option_tokens)."""

    example: float
    prompt: float | None
    option: float | None


def example_tokens(task, spec, data_dir, max_length: int) -> tuple[Measured | None, str]:
    """(the task's examples measured (Measured) or None; how it was measured or why not): from the disk cache where
    this plan measured it before, else measured (measured_tokens) and, where that succeeded, cached."""
    from bench.tasks import cache
    from bench.tasks.data import files_fingerprint
    from bench.tools import plan_entries

    if data_dir is None and not {"synthetic", "files", "manual"} & set(task.source):
        return None, "its rows are on the hub; --data-dir measures a local copy"
    try:
        files = files_fingerprint(task, data_dir)
    except OSError:  # a data file is missing: measured_tokens says so
        key = None
    else:
        key = plan_cache_key(spec.name, ("transformers", "tokenizers"), what="example tokens", task=task.identity(),
                             data=files, model=spec.identity(), max_length=max_length)
    found, value = cache.lookup(key, "plan", plan_entries.example_tokens) if key is not None else (False, None)
    if found:
        return Measured(*value[:3]), value[3]
    measured, how = measured_tokens(task, spec, data_dir, max_length)
    if measured is not None and key is not None:  # a failure (rows unread, tokenizer offline) may pass: measured again
        cache.store(key, [*measured, how], "plan")
    return measured, how


def measured_tokens(task, spec, data_dir, max_length: int) -> tuple[Measured | None, str]:
    """example_tokens measured on the task's first MEASURED_ROWS training rows with the model's tokenizer, under
    every template."""
    from bench.models import head_for, load_tokenizer
    from bench.tasks.data import load_rows
    from bench.tasks.features import train_features

    try:
        rows = load_rows(task, "train", data_dir)[:MEASURED_ROWS]
    except Exception as e:  # missing files: `run` says so before any work; the plan prices at the bound
        return None, f"its training rows cannot be read here: {type(e).__name__}"
    if not rows:
        return None, "its training split is empty"
    try:
        tokenizer = load_tokenizer(spec)
    except Exception as e:  # not in the cache, hub offline
        return None, f"{spec.name}'s tokenizer cannot be loaded here: {type(e).__name__}"
    reader = SimpleNamespace(tokenizer=tokenizer, kind=spec.kind, head=head_for(spec.kind, task.type))
    features = train_features(task, reader, rows, max_length, all_templates=True)
    examples = [v for f in features for v in f.get("variants", [f])]
    templates = len(examples) // len(rows)
    plural = "s" if templates > 1 else ""
    has_options = all("choice_ids" in e for e in examples)
    return Measured(_mean([sequence_tokens(e, reader) for e in examples]),
                    _mean([len(e["prompt_ids"]) for e in examples]) if has_options else None,
                    _mean([option_tokens(e) for e in examples]) if has_options else None), \
        f"measured on {len(rows)} rows × {templates} template{plural}"


def _mean(values: list[int]) -> float:
    return sum(values) / len(values)


def sequence_tokens(example: dict, reader) -> int:
    """One example's priced tokens: its input (a decoder-only model reads its answer inside it), or for an
    encoder-decoder's text-to-text example the longer of its input and its target."""
    if reader.kind == "encoder-decoder" and reader.head != "classifier":
        return max(len(example["input_ids"]), len(example["labels"]))
    return len(example["input_ids"])


def option_tokens(example: dict) -> int:
    """An example's priced answer-option tokens: its longest option's (as the cell encodes it: an encoder-decoder's
    decoder row, a decoder's tokens after the prompt, each ending in the end-of-sequence token). A T-Few step pads
    every option row of its batch to the batch's longest option, so an example's longest is what it brings to the
    batch's width."""
    return max(len(option) for option in example["choice_ids"])


def priced_length(cell, known: dict) -> tuple[int, int | None, str]:
    """(the sequence length the cell is priced at, its answer options' length where it is a T-Few-objective cell
    whose options were measured (else None: at the row's length, an upper bound), what they are and how they were
    found: '' for a cell that is not few-shot, priced at its max_length); `known` keeps each (task, model, data
    folder, max_length)'s measurement.

    A T-Few-objective cell's (one that trains on its options, priced_task.objective_of) is priced at its prompts
    and options measured apart: on an encoder-decoder the prompt's mean tokens (the encoder's rows) and the options'
    (the decoder's rows), each rounded up and capped at max_length; on a decoder one row of the two rounded up and
    summed (prompt + option in one sequence), capped at max_length."""
    from bench import methods
    from bench.tools.priced_task import objective_of

    limit = cell.train.max_length
    if cell.train.shots is None or cell.task.members:
        return limit, None, ""
    key = ("example tokens", cell.task.name, cell.model.name, cell.data_dir, limit)
    if key not in known:
        known[key] = example_tokens(cell.task, cell.model, cell.data_dir, limit)
    measured, how = known[key]
    declared = methods.declared(cell.method)
    in_context = declared is not None and declared.in_context
    on_options = not in_context and objective_of(cell.train, cell.task) is not None
    if measured is None:
        return limit, None, f"max_length {limit}" + (", its answer options too" if on_options else "") + f" ({how})"
    if on_options and measured.option is not None:
        return options_length(cell.model.kind, measured, limit, how)
    examples = cell.train.shots + 1 if in_context else 1
    length = min(limit, math.ceil(examples * measured.example))
    what = f"{examples} examples" if in_context else "an example"
    capped = f", capped at max_length {limit}" if length == limit else ""
    return length, None, f"{length} tokens ({what} of {measured.example:.1f} tokens, {how}{capped})"


def options_length(kind: str, measured: Measured, limit: int, how: str) -> tuple[int, int, str]:
    """priced_length of a T-Few-objective cell whose prompts and options were measured."""
    prompt, option = min(limit, math.ceil(measured.prompt)), min(limit, math.ceil(measured.option))
    means = (f"prompts of {measured.prompt:.1f} tokens, an example's longest answer option of {measured.option:.1f}, "
             f"{how}")
    if kind == "encoder-decoder":
        capped = f", capped at max_length {limit}" if limit in (prompt, option) else ""
        return prompt, option, f"{prompt} tokens a prompt, {option} an answer option ({means}{capped})"
    row = min(limit, prompt + option)
    capped = f", capped at max_length {limit}" if row == limit else ""
    return row, option, f"{row} tokens a row, {option} of them the answer option's ({means}{capped})"


def at_priced_length(cell, known: dict):
    """The cell with its max_length at the length it is priced at, and its answer options' (priced_length), or the
    cell itself."""
    length, option, _ = priced_length(cell, known)
    if length == cell.train.max_length and option is None:
        return cell
    return dataclasses.replace(cell, train=dataclasses.replace(cell.train, max_length=length), option_tokens=option)
