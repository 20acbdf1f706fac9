"""A cell's data: which training rows it uses, and the tokenised training and evaluation sets.

Training rows: all of them, or `shots` (few-shot) or `max_train_samples` rows drawn with the seed,
so every method sees the same examples under a seed; their ids are recorded. Evaluation: the
(evaluation) task's main split and any more splits, each under every template, with the training
rows as demonstrations for in-context learning. Every split is read first, then tokenised: tokenised
sets come from the disk cache when a cell with the same task, split, tokenizer, length and template
made them before.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from bench.config import TrainConfig
from bench.tasks.cache import cached, tokenizer_fingerprint
from bench.tasks.data import eval_splits, files_fingerprint, load_rows, subsample
from bench.tasks.features import EvalSet, eval_features, fixed_shot_features, train_features
from bench.tasks.masked_lm import MLM, masked_features
from bench.tasks.spec import TaskSpec

SELECTION = "selection"  # the selection split's name among the tokenised sets, taken out before scoring


@dataclass
class TrainingData:
    rows: list[dict]
    features: list[dict]
    example_ids: list  # the rows' `idx` (or position) in the training split
    # the selection split under every template ([] without a protocol): chooses settings and checkpoints, never
    # reported (TrainConfig.selection_heldout / selection_split)
    selection: list[EvalSet] = field(default_factory=list)


@dataclass
class EvaluationRows:
    """The evaluation side as read: each split's rows ({name ("" = main): rows}), the solved questions
    of a k-shot split and which split that is, and the in-context demonstrations."""

    task: TaskSpec
    splits: dict[str, tuple[str, list[dict]]]  # name -> (split, rows)
    demos: list[dict]
    k_shot: str | None = None
    solved: list[dict] = ()


def datasets(task: TaskSpec, bundle, train: TrainConfig, seed: int, data_dir,
             in_context: bool = False) -> tuple[TrainingData, dict[str, list[EvalSet]]]:
    """The training data and the evaluation sets ({split name: [an EvalSet per template]}); with
    `in_context`, the training rows are every evaluation prompt's demonstrations. A mixture (task.members) has
    no evaluation sets of its own: a stage's is scored on nothing, a multi-task cell's members each on their own
    (bench/cell/multitask.py)."""
    if task.members:
        return mixture_data(task, bundle, train, seed, data_dir), {}
    rows, heldout = training_rows(task, train, seed, data_dir)
    evaluation = evaluation_rows(task.evaluation, train, data_dir, rows if in_context else ())
    if train.selection_heldout is not None:
        evaluation.splits[SELECTION] = ("train", heldout[: train.max_eval_samples])
    elif train.selection_split is not None:
        split = f"split:{train.selection_split}"
        evaluation.splits[SELECTION] = (split, load_rows(task.evaluation, split, data_dir)[: train.max_eval_samples])
    ids = [r["idx"] for r in rows]
    redraw = {"all_templates": True} if train.redraw_templates else {}  # the key as before when off
    key = _key(task, bundle, files_fingerprint(task, data_dir), split="train", rows=ids,
               max_length=train.max_length, seed=seed, **redraw)
    features = cached(key, lambda: train_features(task, bundle, rows, train.max_length, seed, **redraw))
    sets = tokenised(evaluation, bundle, train, data_dir, seed)
    return TrainingData(rows, features, ids, sets.pop(SELECTION, [])), sets


def mixture_data(task: TaskSpec, bundle, train: TrainConfig, seed: int, data_dir) -> TrainingData:
    """A stage's mixture: each member's rows in the count its mixing rule gives (bench/plan/stages.py:
    mixture_counts; a member whose count exceeds its rows repeats them), each tokenised under its own templates
    (a masked-LM mixture: its text, masked; bench/tasks/masked_lm.py); example ids are `task:idx`."""
    rows = {m.name: training_rows(m, train, seed, data_dir)[0] for m in task.members}
    counts = mixture_counts({name: len(r) for name, r in rows.items()}, task.source["mixing"])
    redraw = {"all_templates": True} if train.redraw_templates else {}
    data = TrainingData([], [], [])
    for index, member in enumerate(task.members):
        pool = rows[member.name]
        chosen = pool * (counts[member.name] // len(pool)) + subsample(pool, counts[member.name] % len(pool), seed)
        ids = [r["idx"] for r in chosen]
        key = _key(member, bundle, files_fingerprint(member, data_dir), split="train", rows=ids,
                   max_length=train.max_length, seed=seed, **redraw)
        make = (lambda: masked_features(member, bundle, chosen, train.max_length, seed)) if task.type == MLM else \
            (lambda: train_features(member, bundle, chosen, train.max_length, seed, **redraw))
        made = cached({**key, "mlm": True} if task.type == MLM else key, make)
        data.features += [_tagged(f, index) for f in made]
        data.rows += chosen
        data.example_ids += [f"{member.name}:{i}" for i in ids]
    return data


def _tagged(feature: dict, index: int) -> dict:
    """A mixture's feature marked with its member's index (which head reads it, which task a router takes:
    bench/layers/task_heads.py), its template variants too (redraw_templates draws one of them per step)."""
    if "variants" in feature:
        return {**feature, "task": index, "variants": [{**v, "task": index} for v in feature["variants"]]}
    return {**feature, "task": index}


def mixture_counts(sizes: dict[str, int], mixing: dict) -> dict[str, int]:
    """Rows drawn from each task of a mixture (bench/plan/stages.py says the rules), by task name."""
    capped = {name: min(n, mixing["cap"]) for name, n in sizes.items()}
    if mixing["rule"] == "proportional":
        return capped
    total = sum(capped.values())
    weights = {name: n ** (1 / mixing["temperature"]) for name, n in capped.items()}
    scale = total / sum(weights.values())
    return {name: max(1, round(w * scale)) if capped[name] else 0 for name, w in weights.items()}


def training_rows(task: TaskSpec, train: TrainConfig, seed: int, data_dir) -> tuple[list[dict], list[dict]]:
    """(the rows a cell trains on, the rows held out of them for selection: [] without `selection_heldout`)."""
    rows = load_rows(task, "train", data_dir)
    if not rows:
        raise ValueError(f"task '{task.name}' has no training rows")
    for i, row in enumerate(rows):
        row.setdefault("idx", i)
    heldout: list[dict] = []
    if train.selection_heldout is not None:
        rows, heldout = hold_out(task, rows, train.selection_heldout, seed)
    return subsample(rows, train.shots or train.max_train_samples, seed), heldout


def hold_out(task: TaskSpec, rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, held out): `fraction` of the rows drawn with `seed`, per class for classification and multiple-choice
    tasks (stratified: each class held out in its share, at least one row of any class with two or more), order
    kept. The same rows under a seed for every method and setting, so settings are compared on the same rows."""
    by_class: dict = {}
    for i, row in enumerate(rows):
        stratum = task.value(row, task.label) if task.label and task.type in ("classification", "multiple_choice") \
            else None
        by_class.setdefault(str(stratum), []).append(i)
    draw = random.Random(f"selection-{seed}")  # not the training draw's generator: the slices are independent
    chosen: set[int] = set()
    for stratum in sorted(by_class):
        members = by_class[stratum]
        n = round(fraction * len(members))
        chosen.update(draw.sample(members, max(n, 1) if len(members) >= 2 else 0))
    if not chosen or len(chosen) == len(rows):
        raise ValueError(f"task '{task.name}': holding out {fraction:g} of {len(rows)} training rows leaves "
                         f"{'nothing to select on' if not chosen else 'nothing to train on'}")
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


def evaluation_rows(task: TaskSpec, train: TrainConfig, data_dir, demos: list[dict] = ()) -> EvaluationRows:
    splits = {name: (split, load_rows(task, split, data_dir)[: train.max_eval_samples])
              for name, split in eval_splits(task).items()}
    # a k-shot evaluation split, unless in-context learning brings its own demonstrations
    k_shot = task.demonstrations["eval"] if task.demonstrations and not demos else None
    solved = load_rows(task, "demos", data_dir) if k_shot is not None else []
    return EvaluationRows(task, splits, list(demos), k_shot, solved)


def tokenised(evaluation: EvaluationRows, bundle, train: TrainConfig, data_dir,
              seed: int | None = None) -> dict[str, list[EvalSet]]:
    task = evaluation.task
    prompts = task.prompts if bundle.head == "lm" and task.prompts else [None]
    shared = _key(task, bundle, files_fingerprint(task, data_dir), n=train.max_eval_samples,
                  max_length=train.max_length, demos=[d.get("idx") for d in evaluation.demos])

    def build(name: str, rows: list[dict], prompt) -> EvalSet:
        if name == evaluation.k_shot:
            return fixed_shot_features(task, bundle, rows, evaluation.solved, train.max_length, prompt)
        return eval_features(task, bundle, rows, train.max_length, prompt, evaluation.demos)

    out = {}
    for name, (split, rows) in evaluation.splits.items():
        out[name] = []
        for i, prompt in enumerate(prompts):
            key = {**shared, "split": split, "template": i}
            if name == SELECTION and split == "train":  # the held-out rows: which ones, the seed says
                key.update(heldout=train.selection_heldout, seed=seed)
            out[name].append(EvalSet(**cached(key, lambda: asdict(build(name, rows, prompt)))))
    return out


def _key(task: TaskSpec, bundle, files: dict, **parts) -> dict:
    return {"task": task.identity(), "tokenizer": tokenizer_fingerprint(bundle.tokenizer), "head": bundle.head,
            "kind": bundle.kind, "data": files, **parts}
