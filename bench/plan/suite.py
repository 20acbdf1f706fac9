"""Suites: YAML files naming methods × models × tasks × seeds and their training settings.

The whole file is validated before any work: unknown keys, names and wrong types each give one
error naming the file, the line and the valid choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import methods, models
from bench.config import MAX_THREADS, check_keys, coerce
from bench.errors import BadInput, did_you_mean, unknown
from bench.files import safe_name
from bench.plan.mixtures import check_mixture_train, parse_mixtures
from bench.plan.stages import (
    StageEntry,
    check_init_from,
    check_language_stages,
    check_stage_settings,
    check_stage_tasks,
    check_task_starts,
    parse_stages,
)
from bench.plan.sweep import Sweep, parse_selection, parse_sweep
from bench.tasks.data import split_location
from bench.tasks.registry import registry as task_registry
from bench.yamlfile import YamlDoc, load_yaml

SUITE_KEYS = {
    "name": str, "description": str, "methods": list, "models": list, "tasks": list, "seeds": list,
    "train": dict, "exclude": list, "cell_timeout_s": float, "data_dir": str, "task_files": list,
    "method_modules": list, "threads": int, "sweep": dict, "selection": dict, "stages": list, "mixtures": list,
}
_ENTRY_KEYS = {"name": str, "label": str, "overrides": dict, "train": dict, "compose": list, "sweep": dict,
               "init_from": str, "language_stages": dict}
_EXCLUDE_KEYS = ("method", "model", "task", "seed")
DEFAULT_CELL_TIMEOUT_S = 3600.0
SEED_LIMIT = 2 ** 32  # seeds are numpy / torch generator seeds: 0 <= seed < 2^32
MAX_SEEDS = 1000
REPO_SUITES = Path(__file__).resolve().parents[2] / "suites"  # the checkout's suites/, beside bench/


@dataclass
class MethodEntry:
    """One `methods:` item: a registry method (or a composition) with overrides and a display label."""

    label: str
    name: str  # registry name, or "compose"
    overrides: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    parts: list["MethodEntry"] = field(default_factory=list)
    where: Callable[..., str] = lambda *k: ""
    sweep: Sweep = field(default_factory=Sweep)  # the entry's own axes (the suite-wide ones merge in the grid)
    init_from: str | None = None  # a stage's name: the method starts from the state it trained (plan/stages.py)
    # a cross-lingual task's target language -> the stage that trained its language adapter (MAD-X's swap at test)
    language_stages: dict[str, str] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    description: str
    path: str
    methods: list[MethodEntry]
    models: list[str]
    tasks: list[str]
    task_train: dict[str, dict]  # per-task training settings (e.g. fewer epochs on MNLI)
    seeds: list[int]
    train: dict
    exclude: list[dict]
    cell_timeout_s: float
    data_dir: str | None
    task_registry: dict
    doc: YamlDoc
    method_modules: tuple[str, ...] = ()  # importable modules that register methods of their own
    threads: int | None = None  # torch threads per cell; None: the machine's cores (see grid.cell_threads)
    sweep: Sweep = field(default_factory=Sweep)  # suite-wide axes (training settings)
    selection: dict = field(default_factory=dict)  # the selection protocol as TrainConfig fields ({} = none)
    sweep_seeds: int | None = None  # two stages: sweep on the first N seeds, then the chosen setting on the rest
    stages: dict[str, StageEntry] = field(default_factory=dict)  # pre-training stages by name
    task_init: dict[str, str] = field(default_factory=dict)  # task -> the task whose trained state its cells start from

    @property
    def sweeps(self) -> bool:
        return bool(self.sweep.axes) or any(m.sweep.axes for m in self.methods)

    def where(self, *keys: Any) -> str:
        return self.doc.where(*keys)

    @property
    def text(self) -> str:
        return Path(self.path).read_text()


def suite_names() -> dict[str, Path]:
    """Suites found by name: those shipped beside the package, overridden by ./suites of the same name."""
    found: dict[str, Path] = {}
    for folder in (REPO_SUITES, Path.cwd() / "suites"):
        if folder.is_dir():
            found.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})
    return found


def find_suite(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise BadInput(f"suite file not found: {path}", "--suite")
        return path
    names = suite_names()
    if name_or_path not in names:
        raise unknown("suite", name_or_path, names, "--suite")
    return names[name_or_path]


def raw_suite(name_or_path: str) -> dict:
    """A suite file's mapping as written, unvalidated (for readers of records whose suite file may be
    gone or changed): {} when it cannot be found or read."""
    try:
        data = load_yaml(find_suite(name_or_path)).data
    except BadInput:
        return {}
    return data if isinstance(data, dict) else {}


def load_suite(name_or_path: str, data_dir: str | None = None) -> Suite:
    path = find_suite(name_or_path)
    doc = load_yaml(path)
    raw = doc.data
    check_keys(raw, SUITE_KEYS, "suite key", doc.where, required=("name", "methods", "models", "tasks"))
    values = {k: coerce(v, SUITE_KEYS[k], doc.where(k), k) for k, v in raw.items()}
    task_files = [_relative(path, p) for p in values.get("task_files", [])]
    method_modules = tuple(_name(m, doc, ("method_modules", i), "method module")
                           for i, m in enumerate(values.get("method_modules", [])))
    methods.import_modules(method_modules, lambda i: doc.where("method_modules", i))
    registry = task_registry(task_files)
    mixtures = parse_mixtures(values.get("mixtures", []), lambda *k: doc.where("mixtures", *k), registry)
    registry.update(mixtures)
    task_entries = [_task_entry(t, doc, ("tasks", i)) for i, t in enumerate(values["tasks"])]
    suite = Suite(
        name=values["name"], description=values.get("description", ""), path=str(path),
        methods=[_method_entry(item, doc, ("methods", i)) for i, item in enumerate(values["methods"])],
        models=[_name(m, doc, ("models", i), "model") for i, m in enumerate(values["models"])],
        tasks=[name for name, _, _ in task_entries],
        task_train={name: train for name, train, _ in task_entries if train},
        task_init={name: start for name, _, start in task_entries if start},
        seeds=[coerce(s, int, doc.where("seeds", i), "seed") for i, s in enumerate(values.get("seeds", [1]))],
        train=values.get("train", {}), exclude=values.get("exclude", []),
        cell_timeout_s=values.get("cell_timeout_s", DEFAULT_CELL_TIMEOUT_S),
        data_dir=data_dir or (_relative(path, values["data_dir"]) if "data_dir" in values else None),
        task_registry=registry, doc=doc, method_modules=method_modules, threads=values.get("threads"),
    )
    for train in [suite.train, *suite.task_train.values(), *(m.train for m in suite.methods)]:
        if isinstance(train.get("forgetting_text"), str):  # a file named in the suite: from the suite's folder
            train["forgetting_text"] = _relative(path, train["forgetting_text"])
    if "sweep" in values:
        suite.sweep = parse_sweep(values["sweep"], lambda *k: doc.where("sweep", *k), None)
    if "selection" in values:
        suite.selection, suite.sweep_seeds = parse_selection(values["selection"], lambda *k: doc.where("selection", *k))
    if "stages" in values:
        suite.stages = parse_stages(values["stages"], lambda *k: doc.where("stages", *k),
                                    lambda item, i: _method_entry(item, doc, ("stages", i, "method")))
        check_stage_tasks(suite.stages, registry)
    for entry in suite.methods:
        if entry.init_from is not None:
            check_init_from(entry, suite.stages)
        if entry.language_stages:
            check_language_stages(entry, suite.stages)
        if entry.name in methods.REGISTRY and methods.get(entry.name).stage_settings:
            check_stage_settings(entry, suite.stages, methods.get(entry.name))
    _check_names(suite)
    _check_protocol(suite)
    check_task_starts(suite)
    used = [name for name in suite.tasks if name in mixtures]
    settings = [(suite.train, lambda k: doc.where("train", k)), (suite.selection, lambda k: doc.where("selection")),
                *((m.train, lambda k, m=m: m.where("train", k)) for m in suite.methods),
                *((suite.task_train.get(name, {}), lambda k: doc.where("tasks")) for name in used)]
    for train, at in settings:
        check_mixture_train(used, train, at)
    return suite


def _check_protocol(suite: Suite) -> None:
    """A sweep needs a selection split; two stages need a sweep and a seed left for the second."""
    if suite.sweeps and not suite.selection:
        where = suite.where("sweep") if suite.sweep.axes else next(m.where("sweep") for m in suite.methods
                                                                     if m.sweep.axes)
        raise BadInput("a sweep needs the suite's `selection:` protocol ({heldout: 0.1}, or {split: <a split of "
                       "the task's own>}): the best setting is chosen there, never on the split the report "
                       "scores", where)
    if suite.sweep_seeds is not None:
        if not suite.sweeps:
            raise BadInput("'sweep_seeds' runs a sweep on its first seeds, and this suite sweeps nothing",
                           suite.where("selection", "sweep_seeds"))
        if suite.sweep_seeds >= len(suite.seeds):
            raise BadInput(f"'sweep_seeds: {suite.sweep_seeds}' leaves none of the suite's {len(suite.seeds)} "
                           "seeds for the chosen setting's second stage", suite.where("selection", "sweep_seeds"))
    split = suite.selection.get("selection_split")
    for name in suite.tasks if suite.selection else ():
        task = suite.task_registry[name]
        if split is None and task.eval_task is not None:
            raise BadInput(f"task '{name}' is scored on task '{task.eval_task.name}': rows held out of its training "
                           f"data are not {task.eval_task.name}'s examples; choose a split of "
                           f"'{task.eval_task.name}' instead (selection: {{split: ...}})", suite.where("selection"))
        if split is None:
            continue
        chosen = split_location(task.evaluation, f"split:{split}")
        for role, key, of in (("reported", "eval", task.evaluation), ("training", "train", task)):
            if chosen == split_location(of, key):
                raise BadInput(f"selection split '{split}' is task '{name}''s {role} split: choosing on it "
                               f"would be selection on the {'test' if role == 'reported' else 'training'} data",
                               suite.where("selection", "split"))


def _relative(suite_path: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (suite_path.parent / q).resolve())


def _name(value: Any, doc: YamlDoc, key: tuple, what: str) -> str:
    if not isinstance(value, str):
        raise BadInput(f"each {what} must be a name, got {value!r}", doc.where(*key))
    return value


def _task_entry(item: Any, doc: YamlDoc, key: tuple) -> tuple[str, dict, str | None]:
    """A `tasks:` item: a name, or {name, train, init_from} with training settings for that task and the task
    whose trained state its cells start from (bench/plan/stages.py: check_task_starts)."""
    if isinstance(item, str):
        return item, {}, None
    check_keys(item, {"name": str, "train": dict, "init_from": str}, "task entry key", lambda k: doc.where(*key, k),
               required=("name",))
    start = coerce(item["init_from"], str, doc.where(*key, "init_from"), "init_from") if "init_from" in item else None
    return (_name(item["name"], doc, key + ("name",), "task"),
            coerce(item.get("train", {}), dict, doc.where(*key, "train"), "train"), start)


def _method_entry(item: Any, doc: YamlDoc, key: tuple) -> MethodEntry:
    def where(*k):
        return doc.where(*key, *k)

    if isinstance(item, str):
        methods.get(item, where())
        return MethodEntry(label=item, name=item, where=where)
    check_keys(item, _ENTRY_KEYS, "method entry key", where)
    item = {k: coerce(v, _ENTRY_KEYS[k], where(k), k) for k, v in item.items()}
    if ("name" in item) == ("compose" in item):
        raise BadInput("a method entry needs exactly one of 'name' or 'compose'", where())
    if "compose" in item:
        if "init_from" in item:
            raise BadInput("a composition cannot start from a stage: give `init_from` to a method entry",
                           where("init_from"))
        parts = [_method_entry(p, doc, key + ("compose", j)) for j, p in enumerate(item["compose"])]
        if len(parts) < 2:
            raise BadInput("'compose' needs at least two methods", where("compose"))
        if "overrides" in item:
            raise BadInput("set overrides on each part of a composition, not on the composition", where("overrides"))
        label = item.get("label", "+".join(p.label for p in parts))
        return MethodEntry(label=label, name="compose", train=item.get("train", {}), parts=parts, where=where,
                           sweep=_entry_sweep(item, where, set()))
    method = methods.get(item["name"], where("name"))
    return MethodEntry(label=item.get("label", item["name"]), name=item["name"],
                       overrides=item.get("overrides", {}), train=item.get("train", {}), where=where,
                       sweep=_entry_sweep(item, where, set(method.defaults) | method.target_keys),
                       init_from=item.get("init_from"),
                       language_stages={str(k): str(v) for k, v in item.get("language_stages", {}).items()})


def _entry_sweep(item: dict, where: Callable[..., str], method_keys: set[str]) -> Sweep:
    if "sweep" not in item:
        return Sweep()
    sweep = parse_sweep(item["sweep"], lambda *k: where("sweep", *k), method_keys)
    for key in sweep.axes:
        if key in item.get("train", {}) or key in item.get("overrides", {}):
            raise BadInput(f"'{key}' is both swept and set: a swept setting takes the sweep's values",
                           where("sweep", key))
    return sweep


def check_name(name: str, where: str) -> str:
    """A suite name that is safe as one folder name (NAME_PATTERN), else BadInput."""
    if not safe_name(name):
        raise BadInput(f"suite name {name!r} cannot be a folder name: use 1-100 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit", where)
    return name


def check_seeds(seeds: list[int], where: Callable[[int], str]) -> None:
    if len(seeds) > MAX_SEEDS:
        raise BadInput(f"{len(seeds)} seeds is more than {MAX_SEEDS}; a grid that size is a typo", where(MAX_SEEDS))
    for i, seed in enumerate(seeds):
        if not 0 <= seed < SEED_LIMIT:
            raise BadInput(f"seed {seed} is outside 0 .. 2^32-1 (what torch and numpy accept)", where(i))


def _check_names(suite: Suite) -> None:
    check_name(suite.name, suite.where("name"))
    for key in ("methods", "models", "tasks", "seeds"):
        if not getattr(suite, key):
            raise BadInput(f"'{key}' is empty: a suite needs at least one", suite.where(key))
    check_seeds(suite.seeds, lambda i: suite.where("seeds", i))
    if suite.threads is not None and not 1 <= suite.threads <= MAX_THREADS:
        raise BadInput(f"'threads' must be in [1, {MAX_THREADS}], got {suite.threads}", suite.where("threads"))
    if not suite.cell_timeout_s > 0:
        raise BadInput(f"'cell_timeout_s' must be positive, got {suite.cell_timeout_s:g}", suite.where("cell_timeout_s"))
    for key, values in (("models", suite.models), ("tasks", suite.tasks), ("seeds", suite.seeds)):
        for i, value in enumerate(values):
            if values.index(value) != i:  # the same cells twice would run twice and look like more seeds
                raise BadInput(f"{key[:-1]} '{value}' is listed twice", suite.where(key, i))
    labels = [m.label for m in suite.methods]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise BadInput(f"method label '{label}' is used twice; give one entry a distinct 'label'",
                           suite.where("methods", i))
    for i, name in enumerate(suite.tasks):
        if name not in suite.task_registry:
            raise unknown("task", name, suite.task_registry, suite.where("tasks", i))
    for i, name in enumerate(suite.models):
        models.resolve_model(name, suite.where("models", i))
    valid = {"method": labels, "model": suite.models, "task": suite.tasks, "seed": suite.seeds}
    for i, rule in enumerate(suite.exclude):
        check_keys(rule, _EXCLUDE_KEYS, "exclude key", lambda k, i=i: suite.where("exclude", i, k))
        for key, value in rule.items():
            for one in value if isinstance(value, list) else [value]:
                if one not in valid[key]:
                    raise BadInput(f"exclude names {key} '{one}', which is not in this suite"
                                   f"{did_you_mean(str(one), map(str, valid[key]))}",
                                   suite.where("exclude", i, key), map(str, valid[key]))
