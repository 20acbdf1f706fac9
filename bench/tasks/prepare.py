"""A cell's data: which training rows it uses, and the tokenised training and evaluation sets.

Training rows: all of them, or `shots` (few-shot) or `max_train_samples` rows drawn with the seed,
so every method sees the same examples under a seed; their ids are recorded. Evaluation: the
(evaluation) task's main split and any more splits, each under every template, with the training
rows as demonstrations for in-context learning. Every split is read first, then tokenised: tokenised
sets come from the disk cache when a cell with the same task, split, tokenizer, length and template
made them before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.config import TrainConfig
from bench.tasks.cache import cached, tokenizer_fingerprint
from bench.tasks.data import eval_splits, files_fingerprint, load_rows, subsample
from bench.tasks.features import EvalSet, eval_features, fixed_shot_features, train_features
from bench.tasks.spec import TaskSpec


@dataclass
class TrainingData:
    rows: list[dict]
    features: list[dict]
    example_ids: list  # the rows' `idx` (or position) in the training split


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
    `in_context`, the training rows are every evaluation prompt's demonstrations."""
    rows = training_rows(task, train, seed, data_dir)
    evaluation = evaluation_rows(task.evaluation, train, data_dir, rows if in_context else ())
    ids = [r["idx"] for r in rows]
    redraw = {"all_templates": True} if train.redraw_templates else {}  # the key as before when off
    key = _key(task, bundle, files_fingerprint(task, data_dir), split="train", rows=ids,
               max_length=train.max_length, seed=seed, **redraw)
    features = cached(key, lambda: train_features(task, bundle, rows, train.max_length, seed, **redraw))
    return TrainingData(rows, features, ids), tokenised(evaluation, bundle, train, data_dir)


def training_rows(task: TaskSpec, train: TrainConfig, seed: int, data_dir) -> list[dict]:
    rows = load_rows(task, "train", data_dir)
    if not rows:
        raise ValueError(f"task '{task.name}' has no training rows")
    for i, row in enumerate(rows):
        row.setdefault("idx", i)
    return subsample(rows, train.shots or train.max_train_samples, seed)


def evaluation_rows(task: TaskSpec, train: TrainConfig, data_dir, demos: list[dict] = ()) -> EvaluationRows:
    splits = {name: (split, load_rows(task, split, data_dir)[: train.max_eval_samples])
              for name, split in eval_splits(task).items()}
    # a k-shot evaluation split, unless in-context learning brings its own demonstrations
    k_shot = task.demonstrations["eval"] if task.demonstrations and not demos else None
    solved = load_rows(task, "demos", data_dir) if k_shot is not None else []
    return EvaluationRows(task, splits, list(demos), k_shot, solved)


def tokenised(evaluation: EvaluationRows, bundle, train: TrainConfig, data_dir) -> dict[str, list[EvalSet]]:
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
            out[name].append(EvalSet(**cached(key, lambda: asdict(build(name, rows, prompt)))))
    return out


def _key(task: TaskSpec, bundle, files: dict, **parts) -> dict:
    return {"task": task.identity(), "tokenizer": tokenizer_fingerprint(bundle.tokenizer), "head": bundle.head,
            "kind": bundle.kind, "data": files, **parts}
