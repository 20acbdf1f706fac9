"""A mixture's cell, beside bench/cell/recipe.py's single-task path: a head per task, the mixed loss, and the
scores of every task of a multi-task cell (bench/plan/mixtures.py).

On a classifier model every member has its own head (bench/layers/task_heads.py) and a training batch mixes
tasks as the mixture's draw gives them (examples-proportional mixing mixes examples, not batches): each row's loss
is its own task's (cross-entropy over its labels, or the squared error of a regression task's output, as
transformers' heads compute them) and the batch's loss is the mean over its rows. On a text-to-text model every
member is text-to-text and the suite's objective serves the mixture, each row's task told to a method that
routes by task (bench/methods/poly.py).

A multi-task cell is scored on each member's evaluation split as a cell of that task alone would be (its templates,
its metrics, the median over templates); `scores.metrics` holds `<task>:<metric>` for each, and `task_average`,
the unweighted mean over the members of each one's main metric (null when any is null: an average over fewer
tasks would not be the same figure).
"""

from __future__ import annotations

from functools import partial

import torch

from bench.cell import evaluate as scoring
from bench.cell.batching import collate
from bench.cell.objectives import Objective
from bench.fmt import mean_of_all
from bench.layers import task_heads
from bench.tasks.features import EvalSet
from bench.tasks.mixture import TASK_AVERAGE, member_key, member_widths
from bench.tasks.prepare import evaluation_rows, tokenised
from bench.tasks.spec import TaskSpec


def install_heads(bundle, task: TaskSpec, seed: int) -> None:
    """A mixture on a classifier model: one head per member in place of the model's head (drawn from `seed`)."""
    if bundle.head == "classifier":
        (name,) = bundle.head_modules
        task_heads.install(bundle.model, name, member_widths(task), seed)


def objective(bundle, task: TaskSpec, suite_objective: Objective) -> Objective:
    """The mixed per-row loss on a classifier model; on a text-to-text one the suite's objective, told each row's
    task first (a method that routes by task reads it: bench/layers/task_heads.select)."""
    if bundle.head != "classifier":
        return Objective(suite_objective.name, partial(_tagged, collate=suite_objective.collate),
                         mixed_terms(bundle, task, suite_objective.terms))
    return Objective("multitask", partial(_collate, pad_id=bundle.tokenizer.pad_token_id), mixed_terms(bundle, task))


def mixed_terms(bundle, task: TaskSpec, suite_terms=None):
    """The loss terms of a mixed batch, each row's task under its "task" key: `objective`'s, and the fake step's
    that prices a mixture's cell (bench/tools/priced_task.py)."""
    if bundle.head != "classifier":
        return partial(_routed, terms=suite_terms)
    return partial(_terms, regression=torch.tensor([m.type == "regression" for m in task.members]))


def _tagged(features: list[dict], collate) -> dict[str, torch.Tensor]:
    return {**collate(features), "task": torch.tensor([f["task"] for f in features], dtype=torch.long)}


def _routed(model, batch: dict, terms) -> dict[str, torch.Tensor]:
    batch = dict(batch)
    task_heads.select(model, batch.pop("task"))
    return terms(model, batch)


def _collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    batch = collate([{"input_ids": f["input_ids"]} for f in features], pad_id)
    batch["labels"] = torch.tensor([float(f["labels"]) for f in features])  # class indices are exact in fp32
    batch["task"] = torch.tensor([f["task"] for f in features], dtype=torch.long)
    return batch


def _terms(model, batch: dict, regression: torch.Tensor) -> dict[str, torch.Tensor]:
    batch = dict(batch)
    rows, labels = batch.pop("task"), batch.pop("labels")
    task_heads.select(model, rows)
    logits = model(**batch).logits.float()
    is_regression = regression.to(rows.device)[rows]
    classes = torch.where(is_regression, 0, labels.long())  # a regression row's class is never read
    cross_entropy = torch.nn.functional.cross_entropy(logits, classes, reduction="none")
    squared_error = (logits[:, 0] - labels) ** 2
    return {"lm": torch.where(is_regression, squared_error, cross_entropy).mean()}


def member_evalsets(task: TaskSpec, bundle, train, data_dir, seed: int) -> dict[str, dict[str, list[EvalSet]]]:
    """Each member's evaluation sets ({member: {split: [an EvalSet per template]}}), as its own cell makes them."""
    return {m.name: tokenised(evaluation_rows(m, train, data_dir), bundle, train, data_dir, seed)
            for m in task.members}


def evaluate(bundle, model, task: TaskSpec, evalsets: dict, batch_size: int, device, autocast, record: dict) -> None:
    """Score every member (its own head on a classifier model) into record["scores"]."""
    metrics: dict = {}
    tasks: dict = {}
    for index, member in enumerate(task.members):
        task_heads.select(model, index)
        scores, _ = scoring.evaluate_all(bundle, model, evalsets[member.name], member, batch_size, device, autocast)
        metrics.update({member_key(member.name, name): value for name, value in scores.items()})
        tasks[member.name] = {"main_metric": member.main_metric, "n_examples": len(evalsets[member.name][""][0].gold)}
    metrics[TASK_AVERAGE] = task_average(metrics, task)
    record["scores"]["metrics"] = metrics
    record["scores"]["tasks"] = tasks
    record["scores"]["n_examples"] = sum(t["n_examples"] for t in tasks.values())


def task_average(metrics: dict, task: TaskSpec) -> float | None:
    """The mean over the members of each one's main metric; None when any member's is unknown."""
    return mean_of_all(metrics.get(member_key(m.name, m.main_metric)) for m in task.members)

