"""Cross-lingual tasks: one task in several languages (XNLI, PAWS-X), trained in one language, scored in all.

A task whose source lists `languages` is a parallel dataset with one hub config per language (facebook/xnli's
`de`, PAWS-X's `ja`): `--data-dir` reads DIR/<dataset>/<language>/<split>.jsonl. A cell trains on the source's
`train_language` (default `en`) and is scored on every language: its main split is the training language's
evaluation split (`scores.<metric>`, as any task's), and each other language is an evaluation split of its own
(`scores.<metric>_<language>`, as MNLI's mismatched is `accuracy_mismatched`); `scores.<metric>_transfer` is
their mean over the target languages (every language but the training one: zero-shot transfer), null when any
of them is. `<task>@<language>` names the same task trained on another of its languages (`xnli@de`).

A synthetic cross-lingual task (offline tests) renders its generator's rows in each language: `en` as drawn,
any other code through a fixed permutation of the synthetic lexicon drawn from the code, the same rows
translated word by word in every language (a parallel evaluation set, as XNLI's).
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import zlib

from bench.tasks.spec import TaskSpec
from bench.tasks.synthetic import NEGATIVE, NEUTRAL, POSITIVE

DEFAULT_TRAIN_LANGUAGE = "en"
VARIANT = "@"  # xnli@de: XNLI trained on German
TRANSFER = "transfer"  # scores.<metric>_transfer


def languages(task: TaskSpec) -> tuple[str, ...]:
    """The task's languages in its definition's order; () for a task in one language."""
    return tuple(task.source.get("languages", ()))


def train_language(task: TaskSpec) -> str | None:
    return task.source.get("train_language", DEFAULT_TRAIN_LANGUAGE) if languages(task) else None


def target_languages(task: TaskSpec) -> list[str]:
    """Every language of the task but the one it trains on: those zero-shot transfer is scored on."""
    return [lang for lang in languages(task) if lang != train_language(task)]


def language_splits(task: TaskSpec) -> dict[str, str]:
    """The target languages' evaluation splits by name (bench/tasks/data.eval_splits adds them)."""
    return {lang: f"eval:{lang}" for lang in target_languages(task)}


def view(task: TaskSpec, split: str) -> tuple[TaskSpec, str]:
    """(the task in one language, the split in it) for a split key of a cross-lingual task: `eval:<language>`
    is that language's evaluation split, every other key (train, eval, a selection split) the training
    language's. A task in one language is returned as it is."""
    if not languages(task):
        return task, split
    language = train_language(task)
    if split.startswith("eval:") and split[5:] in languages(task):
        language, split = split[5:], "eval"
    source = {k: v for k, v in task.source.items() if k not in ("languages", "train_language")}
    source["language"] = language
    if "dataset" in source:
        source["config"] = language
    return dataclasses.replace(task, source=source), split


def variants(specs: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """`<task>@<language>` for every cross-lingual task and each language it does not train on by default."""
    out = {}
    for name, spec in specs.items():
        for lang in target_languages(spec):
            out[f"{name}{VARIANT}{lang}"] = dataclasses.replace(
                spec, name=f"{name}{VARIANT}{lang}", source={**spec.source, "train_language": lang},
                description=f"{spec.description} (trained on {lang})")
    return out


def base_name(task_name: str) -> str:
    """The task a variant trains another language of: xnli@de -> xnli."""
    return task_name.split(VARIANT, 1)[0]


def transfer_scores(task: TaskSpec, scores: dict) -> dict:
    """`<metric>_transfer` for each of the task's metrics: the mean of `<metric>_<language>` over the target
    languages, None when one of them is None (or the task is in one language: {})."""
    targets = target_languages(task)
    if not targets:
        return {}
    out = {}
    for metric in task.metrics:
        values = [scores.get(f"{metric}_{lang}") for lang in targets]
        out[f"{metric}_{TRANSFER}"] = None if any(v is None for v in values) else statistics.fmean(values)
    return out


def per_language(source: dict, scores: dict, metric: str) -> dict[str, float | None]:
    """A record's `metric` by language, from its task's source (a TaskSpec's, or as a record's configuration holds
    it): the main score for the training language, `<metric>_<language>` for the others (a heatmap row)."""
    train = source.get("train_language", DEFAULT_TRAIN_LANGUAGE)
    return {lang: scores.get(metric if lang == train else f"{metric}_{lang}") for lang in source.get("languages", ())}


def lexicon_map(language: str) -> dict[str, str]:
    """A synthetic language: every word of the synthetic lexicon sent to another, by a permutation drawn from the
    language's code (CRC-32 seeded); `en` keeps the words."""
    words = POSITIVE + NEGATIVE + NEUTRAL
    if language == DEFAULT_TRAIN_LANGUAGE:
        return {w: w for w in words}
    shuffled = list(words)
    random.Random(zlib.crc32(language.encode())).shuffle(shuffled)
    return dict(zip(words, shuffled))


def translate(rows: list[dict], columns: tuple[str, ...], language: str) -> list[dict]:
    """The rows with each text column rendered word by word in a synthetic language (labels kept)."""
    mapping = lexicon_map(language)
    return [{**row, **{c: " ".join(mapping.get(w, w) for w in str(row[c]).split()) for c in columns}}
            for row in rows]
