"""Task registry: tasks are YAML definitions (bench/tasks/defs/*.yaml, or a suite's `task_files`).

A definition names its data source (pinned hub dataset, local files or a synthetic generator), the
columns to read, how labels map to names, the prompts text-to-text models see (one or several
templates, each with its answer options), and its metrics. A classification task from a CSV needs
only YAML. Columns may be nested (`translation.ro`); templates use Python format syntax
(`{translation[en]}`).
"""

from __future__ import annotations

import dataclasses
import functools
import string
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from bench.config import check_keys, coerce
from bench.errors import BadInput, unknown
from bench.tasks import metrics as metric_fns
from bench.tasks.synthetic import GENERATORS
from bench.yamlfile import load_yaml

DEMO_SEPARATOR = "\n\n"  # between in-context demonstrations, and before the evaluated prompt

TASK_TYPES = ("classification", "regression", "generation", "multiple_choice")
_KEYS = {"name": str, "description": str, "type": TASK_TYPES, "source": dict, "text": list, "label": str,
         "labels": list, "verbalizers": list, "choices": list, "target": str, "template": str, "templates": list,
         "metrics": list, "main_metric": str, "generation": dict, "group_by": str, "length_normalize": bool,
         "eval_task": str, "demonstrations": dict}
_SOURCE_KEYS = {"synthetic": str, "n_train": int, "n_eval": int, "seed": int, "dataset": str, "config": str,
                "revision": str, "train_split": str, "eval_split": str, "more_eval_splits": dict, "files": dict,
                "delimiter": str, "header": bool, "columns": list, "quoting": ("minimal", "all", "nonnumeric", "none"),
                "manual": dict, "demo_split": str}
# A dataset the hub cannot serve (its licence asks users to request it): where to get it, its files by
# split, and the renaming of their columns to the hub's schema.
_MANUAL_KEYS = {"url": str, "files": dict, "rename": dict}
# A k-shot evaluation protocol (MMLU's 5-shot): which evaluation split it applies to ("" = the main one, or
# a more_eval_splits name), how many solved rows of the source's `demo_split` precede each row, taken from
# the rows sharing its `per` column, in the split's order, after a `header` naming that group.
_DEMONSTRATION_KEYS = {"eval": str, "shots": int, "per": str, "header": str}
_GENERATION_KEYS = {"max_new_tokens": int, "num_beams": int}
_TEMPLATE_KEYS = {"prompt": str, "answers": list}


@dataclass(frozen=True)
class Prompt:
    """A text-to-text template and its answer options (format strings; None for generation)."""

    text: str
    answers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    type: str
    source: dict
    text: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    label: str | None = None
    labels: tuple[str, ...] | None = None
    target: str | None = None
    prompts: tuple[Prompt, ...] = ()  # several: evaluated with each, scores are the median (T-Few)
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 32, "num_beams": 1})
    group_by: str | None = None  # rows sharing this column are one example with several references
    length_normalize: bool = False  # rank classification by mean (not total) log-likelihood per token
    eval_task: "TaskSpec | None" = None  # evaluate on another task (instruction tuning -> MMLU)
    demonstrations: dict | None = None  # a fixed k-shot evaluation (_DEMONSTRATION_KEYS)
    origin: str = ""  # the file:line that defined it

    @property
    def num_labels(self) -> int | None:
        if self.type == "regression":
            return 1
        return len(self.labels) if self.labels else None

    @property
    def evaluation(self) -> "TaskSpec":
        return self.eval_task or self

    # Row access and prompt rendering: what a row of this task says, before any tokenizer sees it.

    @staticmethod
    def value(row: dict, column: str):
        """A column's value; dotted names reach into nested columns (`translation.ro`)."""
        if column in row:
            return row[column]
        value = row
        for part in column.split("."):
            value = value[part]
        return value

    def gold(self, row: dict):
        """The row's label as a class index or a float. A value equal to a label's name is that label, even
        when the file stores it as a number (StoryCloze's endings 1 and 2 under labels ["1", "2"]); other
        integers and numeric strings are class indices."""
        value = self.value(row, self.label)
        if self.type == "regression":
            return float(value)
        if self.labels and not isinstance(value, (bool, float)) and str(value) in self.labels:
            return self.labels.index(str(value))
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"task '{self.name}': label {value!r} is neither a class index nor one of "
                             f"{list(self.labels or [])}") from None

    def render(self, prompt: Prompt, row: dict) -> str:
        return prompt.text.format(**{c: row[c] for c in self.text})

    def answers(self, prompt: Prompt, row: dict) -> list[str]:
        """The answer options of a row under a template (the label names when the task gives none)."""
        return [a.format(**{c: row[c] for c in self.text}) for a in prompt.answers or self.labels]

    def target_text(self, prompt: Prompt, row: dict) -> str:
        if self.type in ("classification", "multiple_choice"):
            return self.answers(prompt, row)[self.gold(row)]
        return str(self.value(row, self.target))

    def solved(self, prompt: Prompt, rows: list[dict], header: str = "") -> str:
        """Solved examples for in-context learning, each rendered with its answer, after a header."""
        return (header + DEMO_SEPARATOR if header else "") + "".join(
            f"{self.render(prompt, r)} {self.target_text(prompt, r)}{DEMO_SEPARATOR}" for r in rows)

    def identity(self) -> dict:
        """Everything that changes results: goes into the cell id."""
        ident = asdict(self)
        for key in ("description", "origin"):
            ident.pop(key)
        if ident["demonstrations"] is None:  # added later: tasks without it keep their cells' ids
            ident.pop("demonstrations")
        if self.eval_task is not None:
            ident["eval_task"] = self.eval_task.identity()
        return ident

    def describe(self) -> dict:
        ev = self.evaluation
        return {"name": self.name, "description": self.description, "type": self.type,
                "source": self.source, "main_metric": ev.main_metric, "prompts": len(self.prompts),
                "eval_task": self.eval_task.name if self.eval_task else None,
                "metrics": [{"name": m, "higher_is_better": metric_fns.METRICS[m].higher_is_better}
                            for m in ev.metrics]}


def template_fields(template: str) -> set[str]:
    """Top-level column names a format string reads ({translation[en]} reads 'translation')."""
    return {f.split("[")[0].split(".")[0] for _, f, _, _ in string.Formatter().parse(template) if f}


def _prompts(values: dict, name: str, where) -> tuple[Prompt, ...]:
    if "template" in values and "templates" in values:
        raise BadInput(f"task '{name}': give 'template' or 'templates', not both", where("templates"))
    if "templates" in values:
        prompts = []
        for i, item in enumerate(values["templates"]):
            check_keys(item, _TEMPLATE_KEYS, "template key", lambda k, i=i: where("templates", i, k),
                       required=("prompt",))
            answers = item.get("answers")
            prompts.append(Prompt(str(item["prompt"]), tuple(map(str, answers)) if answers else None))
        return tuple(prompts)
    if "verbalizers" in values and "choices" in values:
        raise BadInput(f"task '{name}': 'verbalizers' (fixed answers) or 'choices' (per example), not both",
                       where("choices"))
    answers = values.get("verbalizers") or values.get("choices")
    if "template" not in values:
        return (Prompt(" ".join("{" + c + "}" for c in values.get("text", [])), _tuple(answers)),) \
            if values.get("text") else ()
    return (Prompt(values["template"], _tuple(answers)),)


def parse_task(raw: dict, where, base_dir: Path) -> TaskSpec:
    """Validate one task definition; `where(*keys)` gives file:line for error messages."""
    check_keys(raw, _KEYS, "task key", lambda k: where(k), required=("name", "type", "source", "metrics"))
    values = {k: coerce(v, _KEYS[k], where(k), k) for k, v in raw.items()}
    name, ttype = values["name"], values["type"]
    src = values["source"]
    check_keys(src, _SOURCE_KEYS, "source key", lambda k: where("source", k))
    src = {k: coerce(v, _SOURCE_KEYS[k], where("source", k), k) for k, v in src.items()}
    if len([k for k in ("synthetic", "dataset", "files") if k in src]) != 1:
        raise BadInput(f"task '{name}': source needs exactly one of synthetic, dataset, files", where("source"))
    if "synthetic" in src and src["synthetic"] not in GENERATORS:
        raise unknown("synthetic generator", src["synthetic"], GENERATORS, where("source", "synthetic"))
    if "manual" in src:
        check_keys(src["manual"], _MANUAL_KEYS, "manual source key", lambda k: where("source", "manual", k),
                   required=("url", "files"))
        if "dataset" not in src:
            raise BadInput(f"task '{name}': a manual source names its 'dataset' (its folder's name)", where("source"))
    if "files" in src:  # paths relative to the definition file, so a task folder can move
        src["files"] = {split: str((base_dir / p).resolve()) for split, p in src["files"].items()}
        _check_tables(name, src, where)
    if not values["metrics"]:
        raise BadInput(f"task '{name}' lists no metrics", where("metrics"), metric_fns.METRICS)
    for metric in values["metrics"]:
        if metric not in metric_fns.METRICS:
            raise unknown("metric", str(metric), metric_fns.METRICS, where("metrics"))
    main = values.get("main_metric", values["metrics"][0])
    if main not in values["metrics"]:
        raise BadInput(f"task '{name}': main_metric '{main}' is not in its metrics", where("main_metric"))
    needs = {"classification": ("label", "labels"), "regression": ("label",), "generation": ("target",),
             "multiple_choice": ("label",)}[ttype]
    for key in needs:
        if key not in values and not (key == "target" and "eval_task" in values):
            raise BadInput(f"task '{name}' of type {ttype} needs '{key}'", where())
    for key in ("labels", "verbalizers", "choices"):
        if any(isinstance(v, bool) for v in values.get(key, [])):
            raise BadInput(f"task '{name}': YAML reads unquoted yes/no/true/false as booleans; quote the {key}",
                           where(key))
    prompts = _prompts(values, name, where)
    for prompt in prompts:
        used = template_fields(prompt.text).union(*(template_fields(a) for a in prompt.answers or ()))
        missing = used - set(values.get("text", []))
        if missing:
            raise BadInput(f"task '{name}': a template reads {sorted(missing)}, which are not listed in 'text'",
                           where("templates" if "templates" in values else "template"))
        if ttype == "classification" and prompt.answers and len(prompt.answers) != len(values["labels"]):
            raise BadInput(f"task '{name}': one answer per label is needed in every template", where("labels"))
    if ttype == "multiple_choice" and not all(p.answers for p in prompts):
        raise BadInput(f"task '{name}': multiple-choice templates need their answer options ('choices')", where())
    generation = {"max_new_tokens": 32, "num_beams": 1}
    if "generation" in values:
        check_keys(values["generation"], _GENERATION_KEYS, "generation key", lambda k: where("generation", k))
        generation.update(values["generation"])
    return TaskSpec(
        name=name, description=values.get("description", ""), type=ttype, source=src,
        text=tuple(values.get("text", [])), metrics=tuple(values["metrics"]), main_metric=main,
        label=values.get("label"), labels=_tuple(values.get("labels")), target=values.get("target"),
        prompts=prompts, generation=generation, group_by=values.get("group_by"),
        length_normalize=values.get("length_normalize", False),
        eval_task=values.get("eval_task"),  # a name until registry() resolves it
        demonstrations=_demonstrations(values, src, name, where),
        origin=where(),
    )


def _demonstrations(values: dict, src: dict, name: str, where) -> dict | None:
    if "demonstrations" not in values:
        return None
    spec = values["demonstrations"]
    check_keys(spec, _DEMONSTRATION_KEYS, "demonstrations key", lambda k: where("demonstrations", k),
               required=("eval", "shots", "per"))
    spec = {"header": "", **{k: coerce(v, _DEMONSTRATION_KEYS[k], where("demonstrations", k), k)
                             for k, v in spec.items()}}
    splits = ["", *src.get("more_eval_splits", {})]
    if spec["eval"] not in splits:
        raise BadInput(f"task '{name}': demonstrations apply to an evaluation split, one of {splits}",
                       where("demonstrations", "eval"), splits)
    if "demo_split" not in src:
        raise BadInput(f"task '{name}': demonstrations are read from the source's 'demo_split'", where("source"))
    if spec["shots"] < 1:
        raise BadInput(f"task '{name}': demonstrations need at least one shot", where("demonstrations", "shots"))
    return spec


def _check_tables(name: str, src: dict, where) -> None:
    """Local files in a format we read, with consistent table options (header: false needs columns)."""
    from bench.tasks.data import FORMATS, file_format

    for split, path in src["files"].items():
        if file_format(path) is None:
            raise BadInput(f"task '{name}': cannot read '{Path(path).name}': supported files are "
                           f"{', '.join(FORMATS)} (any but .parquet may end in .gz)", where("source", "files", split),
                           FORMATS)
    if src.get("header", True) is False and not src.get("columns"):
        raise BadInput(f"task '{name}': 'header: false' needs 'columns', the names of the file's columns in order",
                       where("source", "header"))
    if "columns" in src and src.get("header", True):
        raise BadInput(f"task '{name}': 'columns' names the columns of a file without a header row; "
                       "add 'header: false'", where("source", "columns"))
    if "delimiter" in src and len(src["delimiter"]) != 1:
        raise BadInput(f"task '{name}': 'delimiter' must be one character, got {src['delimiter']!r}",
                       where("source", "delimiter"))


def _tuple(value):
    return tuple(str(v) for v in value) if value is not None else None


def load_task_file(path: str | Path) -> dict[str, TaskSpec]:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise BadInput("expected a mapping with a top-level `tasks:` list (see docs/tasks.md for a complete "
                       f"file), got a {type(doc.data).__name__}", doc.where())
    check_keys(doc.data, {"tasks"}, "top-level key", lambda k: doc.where(k), required=("tasks",))
    if not isinstance(doc.data["tasks"], list):
        raise BadInput("'tasks' must be a list of task definitions", doc.where("tasks"))
    specs: dict[str, TaskSpec] = {}
    for i, raw in enumerate(doc.data["tasks"]):
        spec = parse_task(raw, lambda *k, i=i: doc.where("tasks", i, *k), Path(path).parent)
        if spec.name in specs:
            raise BadInput(f"task '{spec.name}' is defined twice", doc.where("tasks", i))
        specs[spec.name] = spec
    return specs


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
    return _resolve_eval_tasks(specs)
