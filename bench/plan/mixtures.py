"""Multi-task cells: a suite's `mixtures:`, each a task a method is trained on and scored on, task by task.

```yaml
mixtures:
  - name: glue-mixture                    # a task name `tasks:` can list
    tasks: [sst2, mrpc, rte, cola]          # its members: classification/regression (a head each) or text-to-text
    mixing: {rule: proportional, cap: 2097152}  # T5's examples-proportional rule with a cap (bench/plan/stages.py)
tasks: [sst2, mrpc, rte, cola, glue-mixture]
```

A cell on a mixture trains one method on every member's training rows (each under its own templates, each with
its own head on a classifier model), the count of each member's rows set by the mixing rule and drawn with the
cell's seed, then is scored on every member's evaluation split: `scores.metrics` holds each member's metrics as
`<task>:<metric>` and their mean main score `task_average` (bench/figures.py, docs/measurement.md).
"""

from __future__ import annotations

from typing import Callable

from bench.config import check_keys, coerce
from bench.errors import BadInput, Unsupported, unknown
from bench.files import safe_name
from bench.models import ModelSpec, head_for
from bench.plan.stages import parse_mixing
from bench.tasks.mixture import mixture_spec
from bench.tasks.spec import TaskSpec

MIXTURE_KEYS = {"name": str, "tasks": list, "mixing": dict, "description": str}


def parse_mixtures(raw: list, where: Callable[..., str], registry: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """The suite's `mixtures:` checked against the task registry, as TaskSpecs by name."""
    out: dict[str, TaskSpec] = {}
    for i, item in enumerate(raw):
        def at(*k, i=i):
            return where(i, *k)

        check_keys(item, MIXTURE_KEYS, "mixture key", at, required=("name", "tasks"))
        name = coerce(item["name"], str, at("name"), "name")
        if not safe_name(name):
            raise BadInput(f"mixture name {name!r} cannot be a folder name: letters, digits, '.', '_' or '-'",
                           at("name"))
        if name in out or name in registry:
            raise BadInput(f"mixture '{name}' is already a task name", at("name"))
        names = [coerce(t, str, at("tasks", j), "task") for j, t in enumerate(coerce(item["tasks"], list,
                                                                                      at("tasks"), "tasks"))]
        if len(set(names)) < 2 or len(set(names)) != len(names):
            raise BadInput("a mixture names two or more different tasks", at("tasks"))
        members = []
        for j, task in enumerate(names):
            if task not in registry:
                raise unknown("task", task, registry, at("tasks", j))
            spec = registry[task]
            if spec.eval_task is not None or spec.demonstrations is not None or spec.members:
                raise BadInput(f"task '{task}' is scored on another task or with demonstrations; a mixture's "
                               "members are trained and scored on their own splits", at("tasks", j))
            members.append(spec)
        mixing = parse_mixing(item.get("mixing", {}), lambda *k: at("mixing", *k))
        out[name] = mixture_spec(name, item.get("description", f"a multi-task mixture of {', '.join(names)}"),
                                 members, mixing, scored=True, origin=at())
    return out


def check_mixture_train(used: list[str], train: dict, where: Callable[..., str]) -> None:
    """Settings that read one task's score (choosing during training, a selection protocol) or draw k shots of one
    task have no meaning on a mixture: BadInput when a suite that lists mixtures (`used`) sets them."""
    for key in ("eval_every", "keep_best", "selection_heldout", "selection_split", "shots"):
        if used and train.get(key) is not None and train.get(key) is not False:
            raise BadInput(f"'{key}' needs one task's score; a multi-task cell has one per task", where(key))


def check_text_targets(task: TaskSpec, spec: ModelSpec, what: str, where: str) -> None:
    """A mixture (`what`: "mixture 'x'" or "stage 'x'") on a text-to-text model trains every member on its text
    target, and a regression task has none (a number, read through a regression head): BadInput at `where` before
    any cell runs (such a cell used to fail in its setup, after the grid was planned and priced)."""
    try:
        text_to_text = bool(task.members) and head_for(spec.kind, task.type) == "lm"
    except Unsupported:  # the cell records why it cannot run
        return
    regression = [m.name for m in task.members if m.type == "regression"] if text_to_text else []
    if regression:
        raise BadInput(f"{what} on {spec.name}: {', '.join(regression)} {'is a' if len(regression) == 1 else 'are'} "
                       f"regression task{'s' * (len(regression) > 1)}, which a text-to-text model cannot train "
                       "(no text target); drop it from the mixture, or train the mixture on an encoder (a head per "
                       "task)", where)
