"""A task definition file: the YAML schema and its checks (each error names file:line), into TaskSpecs."""

from __future__ import annotations

from pathlib import Path

from bench.config import check_keys, coerce
from bench.errors import BadInput, unknown
from bench.tasks import metrics as metric_fns
from bench.tasks.spec import TASK_TYPES, Prompt, TaskSpec, template_fields
from bench.tasks.synthetic import GENERATORS
from bench.yamlfile import load_yaml

_KEYS = {"name": str, "description": str, "type": TASK_TYPES, "source": dict, "text": list, "label": str,
         "labels": list, "verbalizers": list, "choices": list, "target": str, "template": str, "templates": list,
         "metrics": list, "main_metric": str, "generation": dict, "group_by": str, "length_normalize": bool,
         "eval_task": str, "demonstrations": dict}
_SOURCE_KEYS = {"synthetic": str, "n_train": int, "n_eval": int, "seed": int, "dataset": str, "config": str,
                "revision": str, "train_split": str, "eval_split": str, "more_eval_splits": dict, "files": dict,
                "delimiter": str, "header": bool, "columns": list, "quoting": ("minimal", "all", "nonnumeric", "none"),
                "manual": dict, "demo_split": str, "split_rows": dict, "p3": str,
                "languages": list, "train_language": str}
# A dataset the hub cannot serve (its licence asks users to request it): where to get it, its files by
# split, and the renaming of their columns to the hub's schema.
_MANUAL_KEYS = {"url": str, "files": dict, "rename": dict}
# A k-shot evaluation protocol (MMLU's 5-shot): which evaluation split it applies to ("" = the main one, or
# a more_eval_splits name), how many solved rows of the source's `demo_split` precede each row, taken from
# the rows sharing its `per` column, in the split's order, after a `header` naming that group.
_DEMONSTRATION_KEYS = {"eval": str, "shots": int, "per": str, "header": str}
_GENERATION_KEYS = {"max_new_tokens": int, "num_beams": int}
_TEMPLATE_KEYS = {"prompt": str, "answers": list}


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
    if len([k for k in ("synthetic", "dataset", "files", "p3") if k in src]) != 1:
        raise BadInput(f"task '{name}': source needs exactly one of synthetic, dataset, files, p3 (a bigscience/P3 "
                       "dataset prefix: bench/tasks/p3.py)", where("source"))
    if "split_rows" in src:
        _check_split_rows(name, src, where)
    if "languages" in src or "train_language" in src:
        _check_languages(name, src, where)
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
    from bench.tasks.datafiles import FORMATS, file_format

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


def _check_languages(name: str, src: dict, where) -> None:
    """A cross-lingual source (bench/tasks/crosslingual.py): distinct language codes, one hub config each (so no
    `config` of its own), the training language among them, no other evaluation splits beside the languages'."""
    from bench.tasks.data import DEFAULT_TRAIN_LANGUAGE

    langs = [str(lang) for lang in src.get("languages", [])]
    if len(langs) < 2 or len(set(langs)) != len(langs) or not all(lang.replace("-", "").isalnum() for lang in langs):
        raise BadInput(f"task '{name}': 'languages' lists two or more distinct language codes (letters, digits, "
                       f"'-'), got {langs}", where("source", "languages"))
    if not ("dataset" in src or "synthetic" in src) or "config" in src or "more_eval_splits" in src:
        raise BadInput(f"task '{name}': a cross-lingual source is a hub dataset (one config per language, so no "
                       "'config' of its own) or a synthetic generator, and its evaluation splits are its languages' "
                       "(no 'more_eval_splits')", where("source"))
    train = src.get("train_language", DEFAULT_TRAIN_LANGUAGE)
    if train not in langs:
        raise BadInput(f"task '{name}': train_language '{train}' is not one of its languages {langs}",
                       where("source", "train_language" if "train_language" in src else "languages"), langs)
    src["languages"] = langs


def _check_split_rows(name: str, src: dict, where) -> None:
    """`split_rows`: a hub dataset's rows per split ({train: 67349, validation: 872}), what the dry-run prices
    epochs and evaluation with when the hub is out of reach."""
    if "dataset" not in src:
        raise BadInput(f"task '{name}': split_rows states a hub dataset's rows per split, and this source has no "
                       "dataset", where("source", "split_rows"))
    for split, rows in src["split_rows"].items():
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise BadInput(f"task '{name}': split_rows.{split} must be a positive count of rows, got {rows!r}",
                           where("source", "split_rows", split))


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
