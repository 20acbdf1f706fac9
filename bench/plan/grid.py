"""Suite -> cells (bench/plan/cellspec.py): every (method, model, task, seed) of a suite, resolved, with
the CLI's selections and the suite's exclusions applied."""

from __future__ import annotations

import dataclasses
import os

from bench import methods
from bench.config import MAX_THREADS, TRAIN_FIELDS, TrainConfig, resolve_train
from bench.env import usable_cores
from bench.errors import BadInput, Unsupported, did_you_mean
from bench.methods.compose import FAMILY as COMPOSITION_FAMILY
from bench.methods.compose import composition_name
from bench.models import ModelSpec, head_for, resolve_model
from bench.plan.cellspec import Cell, cell_config, cell_id
from bench.plan.mixtures import check_text_targets
from bench.plan.selection import SECOND_STAGE
from bench.plan.stages import StageEntry, mixture_task, stage_train
from bench.plan.suite import MethodEntry, Suite, check_seeds
from bench.tasks import crosslingual


def _resolve_method(entry: MethodEntry, arch: str, swept: dict | None = None) -> tuple[str, str, dict, dict]:
    """(identity name, family, resolved config, recommended train settings) of an entry on `arch`; `swept`: the
    method settings of one sweep variant, on top of the entry's overrides."""
    if entry.name != "compose":
        m = methods.get(entry.name)
        swept = swept or {}

        def where(key: str) -> str:
            return entry.sweep.where(key) if key in swept else entry.where("overrides", key)

        return m.name, m.family, m.resolve({**entry.overrides, **swept}, arch, where), m.train
    parts = [_resolve_method(p, arch) for p in entry.parts]
    return (composition_name([p[0] for p in parts]), COMPOSITION_FAMILY,
            {"parts": [{"name": p[0], "config": p[2]} for p in parts]}, {})


def head_settings(train: TrainConfig, spec: ModelSpec, task_type: str) -> TrainConfig:
    """Resolve what depends on the model's head, so the record says what ran: a classification head
    trains on its own loss (objective `head`, not `lm`) and pools as the model's convention says
    (`auto` -> spec.pooling); a text-to-text head pools nothing (null)."""
    try:
        head = head_for(spec.kind, task_type)
    except Unsupported:  # the cell records why
        return train
    if head != "classifier":
        return dataclasses.replace(train, pooling=None)
    pooling = spec.pooling if spec.kind == "encoder" else spec.native_pooling
    return dataclasses.replace(train, objective="head" if train.objective == "lm" else train.objective,
                               pooling=pooling if train.pooling == "auto" else train.pooling)


def cell_threads(requested: int | None, concurrent: int = 1) -> int:
    """Torch threads per cell: as requested, else OMP_NUM_THREADS when set (the usual way to ask), else
    the cores this process may use (its CPU affinity, which container limits narrow) shared among the
    cells that run at once. Never more: oversubscribed threads make steps many times slower."""
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, usable_cores() // concurrent)


def expand(suite: Suite, only_methods=None, only_models=None, only_tasks=None, only_seeds=None,
           threads: int | None = None, concurrent: int = 1, chosen: dict | None = None) -> list[Cell]:
    """All cells of the suite, restricted by the CLI's selections, minus the suite's exclusions.
    `concurrent`: how many cells will run at once, which share the cores when no thread count is asked.
    A sweep's every variant is a cell per seed; with two stages (`selection: {sweep_seeds: N}`) only on the first
    N seeds, and the other seeds' cells are those of the setting `chosen` names per (label, model, task)
    (bench/plan/selection.py; none before the first stage has chosen)."""
    entries = _select_methods(suite, only_methods)
    model_names = _select(only_models, suite.models, "model", "--models", allow_new=True)
    task_names = _select(only_tasks, suite.tasks, "task", "--tasks", allow_new=suite.task_registry)
    seeds = suite.seeds
    if only_seeds is not None:
        seeds = list(dict.fromkeys(only_seeds))  # `--seeds 1,1` is seed 1 once
        check_seeds(seeds, lambda i: "--seeds")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise BadInput(f"--threads must be in [1, {MAX_THREADS}], got {threads}", "--threads")
    per_cell = cell_threads(threads if threads is not None else suite.threads, concurrent)
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    # a task that others start from comes first: its cells' ids are in theirs (bench/plan/stages.py)
    task_names = sorted(task_names, key=lambda t: t in suite.task_init)
    kept = set(suite.task_init.values())
    task_identities: dict[str, dict] = {}  # each identity once: 10,000 cells share a few dozen parts
    for model_name in model_names:
        spec = resolve_model(model_name, "--models")
        model_identity = spec.identity()
        stage_cells = {name: _stage_cell(suite, suite.stages[name], spec, per_cell)
                       for name in dict.fromkeys([*(e.init_from for e in entries if e.init_from),
                                                  *(s for e in entries for s in e.language_stages.values()),
                                                  *(n for e in entries for n in stage_names(e))])}
        cells += stage_cells.values()
        for entry, variant in _variants(suite, entries):
            started: dict[tuple, str] = {}  # (task, seed) -> the id of the cell its trained state starts others from
            method_swept = {k: v for k, v in variant.items() if k not in TRAIN_FIELDS}
            train_swept = {k: v for k, v in variant.items() if k in TRAIN_FIELDS}
            name, family, config, recommended = _resolve_method(entry, spec.arch, method_swept)
            refs = tuple(stage_cells[n].id for n in stage_names(entry))
            config = {**config, **{key: [stage_cells[n].id for n in config[key]] for key in stage_keys(entry)}}
            for task_name in task_names:
                task = suite.task_registry[task_name]
                train = resolve_train([
                    (recommended, lambda k: f"method '{name}' recommended settings"),
                    (suite.train, lambda k: suite.where("train", k)),
                    (suite.task_train.get(task_name, {}), lambda k, t=task_name: _task_where(suite, t, k)),
                    (entry.train, lambda k, e=entry: e.where("train", k)),
                    (train_swept, lambda k, e=entry: suite.sweep.merged(e.sweep).where(k)),
                ], suite.selection)
                train = head_settings(train, spec, task.type)
                if train.balanced_batches and task.type not in ("classification", "multiple_choice"):
                    raise BadInput(f"'balanced_batches' draws examples by class, and task '{task_name}' is "
                                   f"{task.type} (it needs classification or multiple_choice)",
                                   _where_set(suite, entry, task_name, "balanced_batches"))
                if entry.name in methods.REGISTRY and methods.get(entry.name).in_context and train.shots is None:
                    raise BadInput(f"{name} needs 'shots' in its training settings: the examples it shows in "
                                   "the prompt (without it, the whole training set would be)", entry.where())
                task_identity = task_identities.setdefault(task_name, task.identity())
                train_settings = train.as_dict()
                for seed, stage in _variant_seeds(suite, seeds, variant, (entry.label, model_name, task_name), chosen):
                    if _excluded(suite, entry.label, model_name, task_name, seed):
                        continue
                    check_text_targets(task, spec, f"mixture '{task_name}'", task.origin)  # of cells it makes only
                    if set(entry.language_stages) - set(crosslingual.target_languages(task)):
                        targets = crosslingual.target_languages(task) or "one language"
                        raise BadInput(f"'{entry.label}': language_stages name languages "
                                       f"{sorted(entry.language_stages)}; task '{task_name}' is scored in {targets}",
                                       entry.where("language_stages"))
                    start = stage_cells[entry.init_from].id if entry.init_from else \
                        _task_start(suite, task_name, seed, started, (entry.label, model_name))
                    swaps = {lang: stage_cells[s].id for lang, s in entry.language_stages.items()}
                    cid = cell_id(cell_config(name, config, model_identity, task_identity, seed, train_settings, start,
                                              swaps))
                    if cid in seen and seen[cid] != entry.label:
                        raise BadInput(f"method entries '{seen[cid]}' and '{entry.label}' resolve to the same "
                                       "configuration; drop one", suite.where("methods"))
                    if cid in seen:  # the same cell named twice on the command line: run it once
                        continue
                    seen[cid] = entry.label
                    started[(task_name, seed)] = cid
                    cells.append(Cell(cid, suite.name, entry.label, name, family, spec, task, seed, config, train,
                                      suite.cell_timeout_s, suite.data_dir, suite.method_modules, per_cell,
                                      sweep=variant, sweep_stage=stage, init_from=start,
                                      keeps_state=task_name in kept, language_stages=swaps, stage_refs=refs))
    return cells


def _task_start(suite: Suite, task: str, seed: int, started: dict, what: tuple) -> str | None:
    """The id of the cell whose trained state the task's cell of this seed starts from (its `init_from` task's
    cell of the same method entry, setting, model and seed), None for a task that starts from nothing."""
    start = suite.task_init.get(task)
    if start is None:
        return None
    if (start, seed) not in started:
        label, model = what
        raise BadInput(f"task '{task}' starts from the state task '{start}' trains, and this plan has no '{start}' "
                       f"cell of method '{label}', model '{model}', seed {seed} (--tasks, --seeds or `exclude` left "
                       "it out)", suite.where("tasks", suite.tasks.index(task), "init_from"))
    return started[(start, seed)]


def stage_keys(entry: MethodEntry) -> tuple[str, ...]:
    """The entry's settings that name stages (Method.stage_settings)."""
    return tuple(methods.get(entry.name).stage_settings) if entry.name in methods.REGISTRY else ()


def stage_names(entry: MethodEntry) -> list[str]:
    """The stages an entry's settings name, in order (bench/plan/stages.py: check_stage_settings checked them)."""
    return [name for key in stage_keys(entry) for name in entry.overrides.get(key, [])]


def _stage_cell(suite: Suite, stage: StageEntry, spec: ModelSpec, threads: int) -> Cell:
    """A pre-training stage on one model, as a cell (bench/plan/stages.py)."""
    name, family, config, recommended = _resolve_method(stage.method, spec.arch)
    task = mixture_task(stage, suite.task_registry)
    check_text_targets(task, spec, f"stage '{stage.name}'", stage.where("tasks"))
    # not the suite's `train`: its few-shot settings (shots, balanced batches) would shrink or break the mixture
    train = resolve_train([(recommended, lambda k: f"method '{name}' recommended settings"),
                           (stage_train(stage), lambda k: stage.where("train", k))])
    train = head_settings(train, spec, task.type)
    cid = cell_id(cell_config(name, config, spec.identity(), task.identity(), stage.seed, train.as_dict()))
    return Cell(cid, suite.name, f"stage:{stage.name}", name, family, spec, task, stage.seed, config, train,
                suite.cell_timeout_s, suite.data_dir, suite.method_modules, threads, stage=stage.name)


def _variants(suite: Suite, entries: list[MethodEntry]) -> list[tuple[MethodEntry, dict]]:
    """(entry, one variant of its sweep) pairs; an entry without a sweep is one pair with {}."""
    return [(entry, variant) for entry in entries for variant in suite.sweep.merged(entry.sweep).variants(entry.label)]


def _variant_seeds(suite: Suite, seeds: list[int], variant: dict, key: tuple,
                   chosen: dict | None) -> list[tuple[int, int | None]]:
    """A variant's (seed, stage) pairs: every seed (stage None), or with two stages the first `sweep_seeds` (stage
    1), plus the rest (stage 2) for the variant the first stage chose."""
    if not variant or suite.sweep_seeds is None:
        return [(seed, None) for seed in seeds]
    first, rest = seeds[:suite.sweep_seeds], seeds[suite.sweep_seeds:]
    chosen_here = chosen is not None and chosen.get(key) == variant
    return [(seed, 1) for seed in first] + ([(seed, SECOND_STAGE) for seed in rest] if chosen_here else [])


def _where_set(suite: Suite, entry, task: str, key: str) -> str:
    """The file:line of the layer that set a training key: the method entry, the task entry or the suite."""
    if key in entry.train:
        return entry.where("train", key)
    if key in suite.task_train.get(task, {}):
        return _task_where(suite, task, key)
    return suite.where("train", key)


def _task_where(suite: Suite, task: str, key: str) -> str:
    return suite.where("tasks", suite.tasks.index(task), "train", key)


def _excluded(suite: Suite, label: str, model: str, task: str, seed: int) -> bool:
    """A rule matches a cell when every key it names matches (a list value matches any of its items)."""
    cell = {"method": label, "model": model, "task": task, "seed": seed}
    return any(all(cell[k] in (v if isinstance(v, list) else [v]) for k, v in rule.items())
               for rule in suite.exclude)


def _select_methods(suite: Suite, names: list[str] | None) -> list[MethodEntry]:
    """CLI --methods: suite labels first, then any registry method (with the suite's settings)."""
    if names is None:
        return suite.methods
    by_label = {m.label: m for m in suite.methods}
    chosen = []
    for name in names:
        if name in by_label:
            chosen.append(by_label[name])
        elif name in methods.REGISTRY:
            chosen.append(MethodEntry(label=name, name=name, where=lambda *k: "--methods"))
        else:
            choices = sorted(set(by_label) | set(methods.REGISTRY))
            raise BadInput(f"unknown method '{name}'{did_you_mean(name, choices)}", "--methods", choices)
    return chosen


def _select(names, suite_names, what, flag, allow_new=()):
    if names is None:
        return suite_names
    for name in names:
        if name in suite_names:
            continue
        if allow_new is True:  # models: anything resolve_model accepts
            resolve_model(name, flag)
        elif name not in allow_new:
            choices = sorted(set(suite_names) | set(allow_new))
            raise BadInput(f"unknown {what} '{name}'{did_you_mean(name, choices)}", flag, choices)
    return names
