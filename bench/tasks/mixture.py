"""A mixture of tasks as one task: what a pre-training stage trains on (bench/plan/stages.py) and what a
multi-task cell trains on and is scored on, task by task (a suite's `mixtures:`, bench/plan/mixtures.py).

Its members keep their own definitions: each example is rendered under its own task's templates, and on a
classifier model each task has its own head (bench/layers/task_heads.py). The mixture's type is
`classification` when every member is a classification or regression task (an encoder serves it with a head per
task), else `generation` (text-to-text: every member through the LM head). Mixing is T5's and T0's
examples-proportional rule with a cap (bench/tasks/prepare.py: mixture_counts), drawn with the cell's seed.
"""

from __future__ import annotations

from bench.tasks.spec import TaskSpec

CLASSIFIER_TYPES = ("classification", "regression")
TASK_AVERAGE = "task_average"  # a multi-task cell's main score: the mean of its tasks' main metrics


def mixture_spec(name: str, description: str, members: list[TaskSpec], mixing: dict, scored: bool,
                 origin: str = "") -> TaskSpec:
    """The mixture as a TaskSpec with `members`; `scored`: a multi-task cell, scored on each member (its metrics
    the members' metrics, its main score TASK_AVERAGE), else a stage's, scored on nothing."""
    kind = "classification" if all(m.type in CLASSIFIER_TYPES for m in members) else "generation"
    source = {"mixture": [m.name for m in members], "mixing": dict(mixing)}
    # A stage's mixture: scored on nothing. Its type is `classification` when every member is one (a head per member
    # on a classifier model); before multi-task cells every stage mixture was `generation`, so such stages got new
    # ids (and are trained again) while every other stage kept its id.
    if not scored:
        return TaskSpec(name=name, description=description, type=kind, source=source, text=(), metrics=(),
                        main_metric="", members=tuple(members), origin=origin)
    metrics = tuple(dict.fromkeys(metric for m in members for metric in m.evaluation.metrics))
    return TaskSpec(name=name, description=description, type=kind, source={**source, "scored": True}, text=(),
                    metrics=metrics, main_metric=TASK_AVERAGE, members=tuple(members), origin=origin)


def is_multitask(task: TaskSpec) -> bool:
    """A multi-task cell's task: a mixture scored on each of its members."""
    return bool(task.members) and bool(task.source.get("scored"))


def member_key(task: str, metric: str) -> str:
    """A member's metric in a multi-task cell's scores.metrics: `<task>:<metric>`."""
    return f"{task}:{metric}"


def member_widths(task: TaskSpec) -> list[int]:
    """Each member's classifier outputs (its labels; 1 for regression), in member order."""
    return [m.num_labels or 1 for m in task.members]
