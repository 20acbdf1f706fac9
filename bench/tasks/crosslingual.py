"""Cross-lingual tasks: one task in several languages (XNLI, PAWS-X), trained in one language, scored in all.

A task whose source lists `languages` is a parallel dataset with one hub config per language (facebook/xnli's
`de`, PAWS-X's `ja`): `--data-dir` reads DIR/<dataset>/<language>/<split>.jsonl. A cell trains on the source's
`train_language` (default `en`) and is scored on every language: its main split is the training language's
evaluation split (`scores.<metric>`, as any task's), and each other language is an evaluation split of its own
(`scores.<metric>_<language>`, as MNLI's mismatched is `accuracy_mismatched`); `scores.<metric>_transfer` is
their mean over the target languages (every language but the training one: zero-shot transfer), null when any
of them is. `<task>@<language>` names the same task trained on another of its languages (`xnli@de`).

Reading a language's rows (a split key -> that language's config) is bench/tasks/data.py's (`language_view`);
a synthetic task's languages are bench/tasks/synthetic.py's (`translate`).
"""

from __future__ import annotations

import dataclasses

from bench.fmt import mean_of_all
from bench.tasks.data import (
    DEFAULT_TRAIN_LANGUAGE,
    languages,
    target_languages,
    train_language,
)
from bench.tasks.spec import TaskSpec

VARIANT = "@"  # xnli@de: XNLI trained on German
TRANSFER = "transfer"  # scores.<metric>_transfer


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
        out[f"{metric}_{TRANSFER}"] = mean_of_all(scores.get(f"{metric}_{lang}") for lang in targets)
    return out


def per_language(source: dict, scores: dict, metric: str) -> dict[str, float | None]:
    """A record's `metric` by language, from its task's source (a TaskSpec's, or as a record's configuration holds
    it): the main score for the training language, `<metric>_<language>` for the others (a heatmap row)."""
    train = source.get("train_language", DEFAULT_TRAIN_LANGUAGE)
    return {lang: scores.get(metric if lang == train else f"{metric}_{lang}") for lang in source.get("languages", ())}


__all__ = ["DEFAULT_TRAIN_LANGUAGE", "TRANSFER", "VARIANT", "base_name", "languages", "per_language",
           "target_languages", "train_language", "transfer_scores", "variants"]
