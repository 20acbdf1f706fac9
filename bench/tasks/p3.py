"""T0's training mixture from bigscience/P3: a task whose source is `{p3: <dataset prefix>}`.

P3 holds every (dataset, promptsource template) pair of T0's datasets as a subset named
`<dataset>_<subset>_<template>` (T-Few's `get_task_name`), with the prompted input and target as text
(`inputs_pretokenized`, `targets_pretokenized`). A `p3` task is one dataset of the mixture: every subset whose
name starts with its prefix (the `_score_eval` subsets, made for rank evaluation, left out), each template's
training rows capped at 500,000 / its number of templates, as T0's mixture caps a dataset (T-Few's
`T0MixtureReader`: MAX_EXAMPLES_PER_DATASET // num_templates). Each row keeps its subset's name (`template`).

Offline, `--data-dir DIR` reads DIR/P3/<subset>/<split>.jsonl (the hub's layout, as for any dataset).
"""

from __future__ import annotations

from pathlib import Path

P3 = "bigscience/P3"
MAX_EXAMPLES_PER_DATASET = 500_000  # T0's cap per dataset, shared among its templates
COLUMNS = ("inputs_pretokenized", "targets_pretokenized")


def subsets(prefix: str, data_dir: str | Path | None) -> list[str]:
    """The P3 subsets of one dataset, sorted: from the hub's config names, or the folders under DIR/P3."""
    if data_dir is not None:
        folder = Path(data_dir) / P3.split("/")[-1]
        names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    else:
        import datasets

        names = datasets.get_dataset_config_names(P3)
    return sorted(n for n in names if n.startswith(prefix + "_") and not n.endswith("_score_eval"))


def rows(names: list[str], split: str, data_dir: str | Path | None, read_file, revision: str | None = None,
         ) -> list[dict]:
    """A dataset's rows over its templates (`names`: its subsets; "train" capped per template, "validation" whole);
    `read_file` reads a local file (bench/tasks/datafiles.py's)."""
    cap = MAX_EXAMPLES_PER_DATASET // len(names) if split == "train" else None
    out: list[dict] = []
    for name in names:
        if data_dir is not None:
            found = [p for p in (Path(data_dir) / "P3" / name).glob(f"{split}.*") if p.is_file()]
            if not found:
                continue  # a template without this split (P3 has some): T0 read none from it either
            part = read_file(found[0], limit=cap)
        else:
            import datasets

            try:
                part = datasets.load_dataset(P3, name, revision=revision,
                                             split=f"{split}[:{cap}]" if cap else split)
            except ValueError:  # the subset has no such split
                continue
        out += [{**{c: r[c] for c in COLUMNS}, "template": name} for r in part]
    return out
