"""Every task a run can name: the built-in definitions (bench/tasks/defs/*.yaml) and a suite's `task_files`, and
each cross-lingual task trained on another of its languages (`xnli@de`, bench/tasks/crosslingual.py)."""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from pathlib import Path

from bench.errors import BadInput, unknown
from bench.tasks import crosslingual
from bench.tasks.schema import load_task_file
from bench.tasks.spec import TaskSpec


def _resolve_eval_tasks(specs: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    out = {}
    for name, spec in specs.items():
        if isinstance(spec.eval_task, str):
            target = specs.get(spec.eval_task)
            if target is None:
                raise unknown("eval_task", spec.eval_task, specs, spec.origin)
            if target.eval_task is not None:
                raise BadInput(f"task '{name}': eval_task '{target.name}' has an eval_task of its own", spec.origin)
            spec = dataclasses.replace(spec, eval_task=target)
        out[name] = spec
    return out


@functools.lru_cache(maxsize=1)
def builtin_tasks() -> dict[str, TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    defs = resources.files("bench") / "tasks" / "defs"
    for entry in sorted(defs.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            specs.update(load_task_file(Path(str(entry))))
    return _resolve_eval_tasks(specs)


def registry(task_files: list[str | Path] = ()) -> dict[str, TaskSpec]:
    """Built-in tasks plus those of extra definition files (which may not redefine built-ins)."""
    specs = dict(builtin_tasks())
    for path in task_files:
        for name, spec in load_task_file(path).items():
            if name in specs:
                raise BadInput(f"task '{name}' is already defined at {specs[name].origin}", spec.origin)
            specs[name] = spec
    specs.update(crosslingual.variants(specs))  # xnli@de: not listed, but any suite may name it
    return _resolve_eval_tasks(specs)
