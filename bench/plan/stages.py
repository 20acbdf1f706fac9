"""Pre-training stages: a method trained on a mixture of tasks, saved, then the start of other cells.

```yaml
stages:
  - name: t0-mixture                     # what `init_from` names
    method: ia3                          # a registry name, or {name, overrides}
    tasks: [synth-polarity, synth-choice]  # the mixture; each example under its own task's templates
    mixing: {rule: proportional, cap: 500000}   # or {rule: temperature, temperature: 2.0, cap: ...}
    train: {max_steps: 1000, lr: 3.0e-3}   # over the method's recommended settings (not the suite's train)
    seed: 0
methods:
  - {name: ia3, init_from: t0-mixture, label: ia3+pre-training}
```

A stage is a cell of its own per model (its task the mixture: `TaskSpec.members`), trained with the LM loss on
each example's answer (on a classifier model whose tasks are all classification or regression: each task's own
head and loss, bench/cell/multitask.py; or, with `objective: mlm`, an encoder's masked-LM loss on the tasks' text, 15 % of its
tokens masked as BERT's: bench/tasks/masked_lm.py; MAD-X's language adapters are trained so), evaluated on
nothing, its trained state saved under results/<suite>/stages/<its id>/. A cell with `init_from` applies its
method, then loads that state before training; its configuration holds the stage's cell id, so its id hashes
the stage's whole configuration. `peft-bench run` runs the stages first, each once however many cells start
from it; the dry-run lists and prices each once.

A task can start from another task's trained state instead (the LoRA paper starts MRPC, RTE and STS-B from its
MNLI-adapted LoRA weights):

```yaml
tasks:
  - mnli
  - {name: mrpc, init_from: mnli}   # each cell starts from the MNLI cell of its method, model, seed and setting
```

That MNLI cell is an ordinary cell of the suite (trained, scored, reported) that also saves its trained state under
results/<suite>/stages/<its id>/; `peft-bench run` runs it before the cells that start from it, which load all of
its state but the task head (a classifier's head is its own task's: its labels). Their configuration holds its id.

Mixing (T5 / T0's rules): `proportional` takes each task's training rows up to `cap` (T0: 500,000 examples per
dataset); `temperature` then rescales each task's share to its capped size to the power 1/T (T > 1 flattens the
mixture), keeping the total, a task repeating its rows where its share exceeds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from bench import methods
from bench.config import check_keys, coerce
from bench.errors import BadInput, unknown
from bench.files import safe_name
from bench.tasks.masked_lm import MLM
from bench.tasks.mixture import mixture_spec
from bench.tasks.spec import TaskSpec

STAGE_KEYS = {"name": str, "method": (str, dict), "tasks": list, "mixing": dict, "train": dict, "seed": int,
              "objective": ("lm", "mlm")}
MIXING_KEYS = {"rule": ("proportional", "temperature"), "cap": int, "temperature": float}
DEFAULT_MIXING = {"rule": "proportional", "cap": 500_000}


@dataclass
class StageEntry:
    name: str
    method: Any  # a suite.MethodEntry
    tasks: list[str]
    mixing: dict
    train: dict
    seed: int
    where: Callable[..., str]
    objective: str = "lm"  # lm: each example's answer; mlm: masked-LM on the tasks' text (an encoder's)


def parse_stages(raw: list, where: Callable[..., str], method_entry: Callable) -> dict[str, StageEntry]:
    """The suite's `stages:` checked; `method_entry(item, key)` parses a method as the suite's entries are."""
    stages: dict[str, StageEntry] = {}
    for i, item in enumerate(raw):
        def at(*k, i=i):
            return where(i, *k)

        check_keys(item, STAGE_KEYS, "stage key", at, required=("name", "method", "tasks"))
        name = coerce(item["name"], str, at("name"), "name")
        if not safe_name(name):
            raise BadInput(f"stage name {name!r} cannot be a folder name: letters, digits, '.', '_' or '-'", at("name"))
        if name in stages:
            raise BadInput(f"stage '{name}' is defined twice", at("name"))
        method = method_entry(item["method"], i)
        if method.name == "compose" or method.train or method.sweep.axes:
            raise BadInput("a stage's method is a registry name or {name, overrides}; its training settings are "
                           "the stage's `train`", at("method"))
        tasks = [coerce(t, str, at("tasks", j), "task") for j, t in enumerate(coerce(item["tasks"], list,
                                                                                      at("tasks"), "tasks"))]
        if not tasks:
            raise BadInput("a stage's mixture needs at least one task", at("tasks"))
        mixing = parse_mixing(item.get("mixing", {}), lambda *k: at("mixing", *k))
        train = coerce(item.get("train", {}), dict, at("train"), "train")
        if "epochs" in train or "max_steps" not in train:
            raise BadInput("a stage trains for `max_steps` (its mixture's size is known only once read)", at("train"))
        for key in ("eval_every", "keep_best"):
            if key in train:
                raise BadInput(f"a stage is scored on nothing, so '{key}' has nothing to do", at("train", key))
        stages[name] = StageEntry(name, method, tasks, mixing, train, coerce(item.get("seed", 0), int, at("seed"),
                                                                            "seed"), at,
                                  coerce(item.get("objective", "lm"), STAGE_KEYS["objective"], at("objective"),
                                         "objective"))
    return stages


def parse_mixing(raw, at: Callable[..., str]) -> dict:
    """A mixture's `mixing:` checked, over DEFAULT_MIXING; `at(*keys)` names where (a stage's, a suite mixture's)."""
    mixing = {**DEFAULT_MIXING, **coerce(raw, dict, at(), "mixing")}
    check_keys(mixing, MIXING_KEYS, "mixing key", lambda k: at(k))
    mixing = {k: coerce(v, MIXING_KEYS[k], at(k), k) for k, v in mixing.items()}
    if mixing["cap"] < 1:
        raise BadInput(f"'cap' must be a positive whole number, got {mixing['cap']}", at("cap"))
    if mixing["rule"] == "temperature":
        if not mixing.get("temperature", 0) > 0:
            raise BadInput("temperature mixing needs 'temperature' > 0", at())
    elif "temperature" in mixing:
        raise BadInput("'temperature' is a setting of the temperature rule", at("temperature"))
    return mixing


def check_stage_tasks(stages: dict[str, StageEntry], registry: dict) -> None:
    for stage in stages.values():
        for j, name in enumerate(stage.tasks):
            if name not in registry:
                raise unknown("task", name, registry, stage.where("tasks", j))
            if registry[name].eval_task is not None:
                raise BadInput(f"task '{name}' is scored on another task; a mixture takes training tasks",
                               stage.where("tasks", j))


def check_init_from(entry, stages: dict[str, StageEntry]) -> None:
    """A method entry's `init_from` names a stage of the same method and settings (so its state loads)."""
    stage = stages.get(entry.init_from)
    if stage is None:
        raise unknown("stage", entry.init_from, stages, entry.where("init_from"))
    if (stage.method.name, stage.method.overrides) != (entry.name, entry.overrides):
        raise BadInput(f"'{entry.label}' starts from stage '{stage.name}', which trains {stage.method.name} "
                       f"with {stage.method.overrides or 'its defaults'}: the state loads only into the same method "
                       "with the same settings", entry.where("init_from"))


def check_language_stages(entry, stages: dict[str, StageEntry]) -> None:
    """A method entry's `language_stages` ({language: stage}): masked-LM stages of its method and settings, the
    entry starting (init_from) from its training language's; the entry's method swaps them in to score each
    language (bench/cell/languages.py)."""
    if entry.init_from is None or not getattr(methods.get(entry.name).build, "swaps_languages", False):
        raise BadInput(f"'{entry.label}': language_stages give a method that swaps language adapters (madx) the "
                       "target languages' adapters; it needs `init_from`, the training language's stage",
                       entry.where("language_stages"))
    for language, name in entry.language_stages.items():
        stage = stages.get(name)
        if stage is None:
            raise unknown("stage", name, stages, entry.where("language_stages", language))
        if stage.objective != MLM or (stage.method.name, stage.method.overrides) != (entry.name, entry.overrides):
            raise BadInput(f"stage '{name}' must train {entry.name}'s language adapter with the same settings by "
                           "masked-LM (`objective: mlm`)", entry.where("language_stages", language))


def check_stage_settings(entry, stages: dict[str, StageEntry], method) -> None:
    """A method entry's settings that name stages (Method.stage_settings): each a list of stages of the method the
    setting takes, trained with the same values of every setting the two methods share (so the states load)."""
    for key, trains in method.stage_settings.items():
        names = entry.overrides.get(key, [])
        if not isinstance(names, list) or not names:
            raise BadInput(f"{method.name}'s '{key}' names the stages that train its {trains} states: a list",
                           entry.where("overrides", key))
        for j, name in enumerate(names):
            stage = stages.get(name)
            if stage is None:
                raise unknown("stage", name, stages, entry.where("overrides", key, j))
            if stage.method.name != trains:
                raise BadInput(f"stage '{name}' trains {stage.method.name}; {method.name}'s '{key}' takes stages of "
                               f"{trains}", entry.where("overrides", key, j))
            theirs = methods.get(trains)
            shared = (set(method.defaults) & set(theirs.defaults)) - {key}
            ours_values = {k: entry.overrides.get(k, method.defaults[k]) for k in shared}
            stage_values = {k: stage.method.overrides.get(k, theirs.defaults[k]) for k in shared}
            if ours_values != stage_values:
                raise BadInput(f"stage '{name}' trains {trains} with {stage_values}, and {entry.label} reads it with "
                               f"{ours_values}: the settings must agree", entry.where("overrides", key, j))
            # a setting the reader does not share (where the adapter sits) it takes at the default: so must the stage
            changed = sorted(k for k, v in stage.method.overrides.items()
                             if k not in shared and v != theirs.defaults[k])
            if changed:
                raise BadInput(f"stage '{name}' sets {', '.join(changed)}, which {method.name} reads at "
                               f"{trains}'s defaults", entry.where("overrides", key, j))


def mixture_task(stage: StageEntry, registry: dict) -> TaskSpec:
    """The stage's mixture as one task: its members' training rows under their own templates."""
    spec = mixture_spec(f"mixture-{stage.name}", f"stage '{stage.name}': a mixture of {', '.join(stage.tasks)}",
                        [registry[name] for name in stage.tasks], stage.mixing, scored=False)
    return dataclasses.replace(spec, type=MLM) if stage.objective == MLM else spec


def stage_train(stage: StageEntry) -> dict:
    """The stage's own training settings as a layer: the answer's LM loss unless it names another objective."""
    return {"objective": "lm", **stage.train}


def check_task_starts(suite) -> None:
    """Each task's `init_from` names another task of the suite that starts from nothing itself, in a suite whose
    cells can find theirs: no method entry starting from a stage too (a cell starts from one state), no two-stage
    sweep (the setting each task chose may differ)."""
    for name, start in suite.task_init.items():
        where = suite.where("tasks", suite.tasks.index(name), "init_from")
        if start not in suite.tasks:
            raise unknown("task", start, suite.tasks, where)
        if start == name:
            raise BadInput(f"task '{name}' cannot start from its own trained state", where)
        if start in suite.task_init:
            raise BadInput(f"task '{name}' starts from '{start}', which starts from '{suite.task_init[start]}': "
                           "start from a task that starts from nothing", where)
        if suite.sweep_seeds is not None:
            raise BadInput(f"task '{name}' starts from '{start}''s trained state, and a two-stage sweep may choose "
                           "another setting for each task: sweep without 'sweep_seeds'", where)
        for entry in suite.methods:
            if entry.init_from is not None:
                raise BadInput(f"task '{name}' starts from '{start}''s trained state, and method entry "
                               f"'{entry.label}' from stage '{entry.init_from}': a cell starts from one state",
                               where)
