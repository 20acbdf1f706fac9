"""The training and evaluation rows a plan prices (bench/tools/plan_cost.py): a cell's training rows and each task
split's, counted from local files or synthetic tasks, or stated (`source.split_rows`) or read from the hub for a hub
dataset; None where they cannot be known, never guessed."""

from __future__ import annotations

import dataclasses

from bench.plan.cellspec import Cell


def train_rows(cell: Cell, known: dict) -> int | None:
    """Training rows the cell trains on (shots or max_train_samples of the split), None when unknown;
    `known` keeps each task's split size, read once per plan."""
    if cell.task.members:  # a mixture: each member's rows as its own cell would take them, then the mixing rule
        from bench.tasks.prepare import mixture_counts

        sizes = {m.name: train_rows(dataclasses.replace(cell, task=m), known) for m in cell.task.members}
        return None if None in sizes.values() else sum(mixture_counts(sizes, cell.task.source["mixing"]).values())
    cap = cell.train.shots or cell.train.max_train_samples
    rows = known_rows(cell.task, "train", cell.data_dir, known)
    if rows is None:
        return cap if cap is not None and cell.train.shots else None
    return min(rows, cap) if cap is not None else rows


def known_rows(task, split: str, data_dir, known: dict) -> int | None:
    """split_rows, read once per plan for each (task, split, data folder)."""
    key = ("rows", task.name, split, data_dir)
    if key not in known:
        known[key] = split_rows(task, data_dir, split)
    return known[key]


def split_rows(task, data_dir, split: str = "train") -> int | None:
    """Rows of a task's split ("train", "eval", "eval:<name>"): counted where they are local or synthetic; for a
    hub dataset, the size its definition states (`source.split_rows`, for pricing offline), else the hub's (None
    offline)."""
    from bench.tasks.data import hub_offline, hub_split, language_view, load_rows

    task, split = language_view(task, split)  # a cross-lingual task's split: its language's config
    stated = (task.source.get("split_rows") or {}).get(hub_split(task, split)) if "dataset" in task.source else None
    if stated is not None and data_dir is None:
        return stated
    if "dataset" in task.source and "manual" not in task.source and data_dir is None:
        if hub_offline():
            return None
        try:
            from datasets import load_dataset_builder

            info = load_dataset_builder(task.source["dataset"], task.source.get("config"),
                                        revision=task.source.get("revision")).info
            return info.splits[hub_split(task, split)].num_examples
        except Exception:  # offline, or no split sizes published
            return None
    try:
        return len(load_rows(task, split, data_dir))
    except Exception:  # a missing file: `run` says so before any work; the plan just cannot count it
        return None
