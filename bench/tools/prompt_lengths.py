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
length (a T-Few-objective cell's: batch_size examples with every answer option a row, each prompt and option at that
length, bench/tools/priced_task.py options_batch), and an evaluation pass (plan_cost.eval_flops: one per answer
option) at one.

Only rows already on this machine are measured (synthetic tasks, local files, --data-dir, a task's manual files):
the plan downloads no dataset. Where the rows or the tokenizer cannot be read, the cell is priced at max_length,
an upper bound, and its line says why.

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


def example_tokens(task, spec, data_dir, max_length: int) -> tuple[float | None, str]:
    """(mean tokens of one example of the task as the model reads it, each cut at max_length as a cell cuts it, or
    None; how it was measured or why not): from the disk cache where this plan measured it before, else measured
    (measured_tokens) and, where that succeeded, cached."""
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
        return value[0], value[1]
    mean, how = measured_tokens(task, spec, data_dir, max_length)
    if mean is not None and key is not None:  # a failure (rows unread, tokenizer offline) may pass: measured again
        cache.store(key, [mean, how], "plan")
    return mean, how


def measured_tokens(task, spec, data_dir, max_length: int) -> tuple[float | None, str]:
    """example_tokens measured on the task's first MEASURED_ROWS training rows with the model's tokenizer."""
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
    lengths = [sequence_tokens(e, reader) for e in examples]
    templates = len(examples) // len(rows)
    plural = "s" if templates > 1 else ""
    return sum(lengths) / len(lengths), f"measured on {len(rows)} rows × {templates} template{plural}"


def sequence_tokens(example: dict, reader) -> int:
    """One example's priced tokens: its input (a decoder-only model reads its answer inside it), or for an
    encoder-decoder's text-to-text example the longer of its input and its target."""
    if reader.kind == "encoder-decoder" and reader.head != "classifier":
        return max(len(example["input_ids"]), len(example["labels"]))
    return len(example["input_ids"])


def priced_length(cell, known: dict) -> tuple[int, str]:
    """(the sequence length the cell is priced at, what it is and how it was found: '' for a cell that is not
    few-shot, priced at its max_length); `known` keeps each (task, model, data folder, max_length)'s measurement."""
    from bench import methods

    limit = cell.train.max_length
    if cell.train.shots is None or cell.task.members:
        return limit, ""
    key = ("example tokens", cell.task.name, cell.model.name, cell.data_dir, limit)
    if key not in known:
        known[key] = example_tokens(cell.task, cell.model, cell.data_dir, limit)
    mean, how = known[key]
    if mean is None:
        return limit, f"max_length {limit} ({how})"
    declared = methods.declared(cell.method)
    in_context = declared is not None and declared.in_context
    examples = cell.train.shots + 1 if in_context else 1
    length = min(limit, math.ceil(examples * mean))
    what = f"{examples} examples" if in_context else "an example"
    capped = f", capped at max_length {limit}" if length == limit else ""
    return length, f"{length} tokens ({what} of {mean:.1f} tokens, {how}{capped})"


def at_priced_length(cell, known: dict):
    """The cell with its max_length at the length it is priced at (priced_length), or the cell itself."""
    length, _ = priced_length(cell, known)
    if length == cell.train.max_length:
        return cell
    return dataclasses.replace(cell, train=dataclasses.replace(cell.train, max_length=length))
