"""Task registry: tasks are YAML definitions (bench/tasks/defs/*.yaml, or a suite's `task_files`).

A definition names its data source, the columns to read, how labels map to names and answer words,
the text-to-text template, and its metrics. Adding a classification task from a CSV needs only YAML.
"""

from __future__ import annotations

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

TASK_TYPES = ("classification", "regression", "generation", "multiple_choice")
_KEYS = {"name": str, "description": str, "type": TASK_TYPES, "source": dict, "text": list, "label": str,
         "labels": list, "verbalizers": list, "target": str, "template": str, "metrics": list,
         "main_metric": str, "generation": dict, "group_by": str}
_SOURCE_KEYS = {"synthetic": str, "n_train": int, "n_eval": int, "seed": int, "dataset": str, "config": str,
                "revision": str, "train_split": str, "eval_split": str, "files": dict}
_GENERATION_KEYS = {"max_new_tokens": int, "num_beams": int}


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
    verbalizers: tuple[str, ...] | None = None
    target: str | None = None
    template: str | None = None
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 32, "num_beams": 1})
    group_by: str | None = None  # rows sharing this column are one example with several references
    origin: str = ""  # the file:line that defined it

    @property
    def num_labels(self) -> int | None:
        if self.type == "regression":
            return 1
        return len(self.labels) if self.labels else None

    def identity(self) -> dict:
        """Everything that changes results: goes into the cell id."""
        ident = asdict(self)
        for key in ("description", "origin"):
            ident.pop(key)
        return ident

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description, "type": self.type,
                "source": self.source, "main_metric": self.main_metric,
                "metrics": [{"name": m, "higher_is_better": metric_fns.METRICS[m].higher_is_better}
                            for m in self.metrics]}


def parse_task(raw: dict, where, base_dir: Path) -> TaskSpec:
    """Validate one task definition; `where(*keys)` gives file:line for error messages."""
    check_keys(raw, _KEYS, "task key", lambda k: where(k), required=("name", "type", "source", "metrics"))
    values = {k: coerce(v, _KEYS[k], where(k), k) for k, v in raw.items()}
    name = values["name"]
    src = values["source"]
    check_keys(src, _SOURCE_KEYS, "source key", lambda k: where("source", k))
    src = {k: coerce(v, _SOURCE_KEYS[k], where("source", k), k) for k, v in src.items()}
    kinds = [k for k in ("synthetic", "dataset", "files") if k in src]
    if len(kinds) != 1:
        raise BadInput(f"task '{name}': source needs exactly one of synthetic, dataset, files", where("source"))
    if "synthetic" in src and src["synthetic"] not in GENERATORS:
        raise unknown("synthetic generator", src["synthetic"], GENERATORS, where("source", "synthetic"))
    if "files" in src:  # paths relative to the definition file, so a task folder can move
        src["files"] = {split: str((base_dir / p).resolve()) for split, p in src["files"].items()}
    for metric in values["metrics"]:
        if metric not in metric_fns.METRICS:
            raise unknown("metric", str(metric), metric_fns.METRICS, where("metrics"))
    main = values.get("main_metric", values["metrics"][0])
    if main not in values["metrics"]:
        raise BadInput(f"task '{name}': main_metric '{main}' is not in its metrics", where("main_metric"))
    ttype = values["type"]
    needs = {"classification": ("label", "labels"), "regression": ("label",), "generation": ("target",),
             "multiple_choice": ("label",)}[ttype]
    for key in needs:
        if key not in values:
            raise BadInput(f"task '{name}' of type {ttype} needs '{key}'", where())
    if "verbalizers" in values and len(values["verbalizers"]) != len(values.get("labels", [])):
        raise BadInput(f"task '{name}': one verbalizer per label is needed", where("verbalizers"))
    if "template" in values:
        fields = {f for _, f, _, _ in string.Formatter().parse(values["template"]) if f}
        missing = fields - set(values.get("text", []))
        if missing:
            raise BadInput(f"task '{name}': template uses {sorted(missing)}, which are not in 'text'",
                           where("template"))
    generation = {"max_new_tokens": 32, "num_beams": 1}
    if "generation" in values:
        check_keys(values["generation"], _GENERATION_KEYS, "generation key", lambda k: where("generation", k))
        generation.update(values["generation"])
    return TaskSpec(
        name=name, description=values.get("description", ""), type=ttype, source=src,
        text=tuple(values.get("text", [])), metrics=tuple(values["metrics"]), main_metric=main,
        label=values.get("label"), labels=_tuple(values.get("labels")),
        verbalizers=_tuple(values.get("verbalizers")), target=values.get("target"),
        template=values.get("template"), generation=generation, group_by=values.get("group_by"),
        origin=where(),
    )


def _tuple(value):
    return tuple(str(v) for v in value) if value is not None else None


def load_task_file(path: str | Path) -> dict[str, TaskSpec]:
    doc = load_yaml(path)
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


@functools.lru_cache(maxsize=1)
def builtin_tasks() -> dict[str, TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    defs = resources.files("bench") / "tasks" / "defs"
    for entry in sorted(defs.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            specs.update(load_task_file(Path(str(entry))))
    return specs


def registry(task_files: list[str | Path] = ()) -> dict[str, TaskSpec]:
    """Built-in tasks plus those of extra definition files (which may not redefine built-ins)."""
    specs = dict(builtin_tasks())
    for path in task_files:
        for name, spec in load_task_file(path).items():
            if name in specs:
                raise BadInput(f"task '{name}' is already defined at {specs[name].origin}", spec.origin)
            specs[name] = spec
    return specs
