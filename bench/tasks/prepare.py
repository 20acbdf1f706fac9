"""A cell's data: which training rows it uses, and the tokenised training and evaluation sets.

Training rows: all of them, or `shots` (few-shot) or `max_train_samples` rows drawn with the seed,
so every method sees the same examples under a seed; their ids are recorded. Evaluation: the
(evaluation) task's main split and any more splits, each under every template, with the training
rows as demonstrations for in-context learning. Tokenised sets come from the disk cache when a cell
with the same task, split, tokenizer, length and template made them before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.config import TrainConfig
from bench.tasks import TaskSpec
from bench.tasks.cache import cached, tokenizer_fingerprint
from bench.tasks.data import eval_splits, files_fingerprint, load_rows, subsample
from bench.tasks.features import EvalSet, eval_features, fixed_shot_features, train_features


@dataclass
class TrainingData:
    rows: list[dict]
    features: list[dict]
    example_ids: list  # the rows' `idx` (or position) in the training split


def _key(task: TaskSpec, bundle, data_dir, **parts) -> dict:
    return {"task": task.identity(), "tokenizer": tokenizer_fingerprint(bundle.tokenizer), "head": bundle.head,
            "kind": bundle.kind, "data": files_fingerprint(task, data_dir), **parts}


def training_data(task: TaskSpec, bundle, train: TrainConfig, seed: int, data_dir) -> TrainingData:
    rows = load_rows(task, "train", data_dir)
    if not rows:
        raise ValueError(f"task '{task.name}' has no training rows")
    for i, row in enumerate(rows):
        row.setdefault("idx", i)
    rows = subsample(rows, train.shots or train.max_train_samples, seed)
    ids = [r["idx"] for r in rows]
    redraw = {"all_templates": True} if train.redraw_templates else {}  # the key as before when off
    features = cached(_key(task, bundle, data_dir, split="train", rows=ids, max_length=train.max_length, seed=seed,
                           **redraw), lambda: train_features(task, bundle, rows, train.max_length, seed, **redraw))
    return TrainingData(rows, features, ids)


def evaluation_sets(task: TaskSpec, bundle, train: TrainConfig, data_dir, demos: list[dict] = ()) -> dict[str, list[EvalSet]]:
    """{split name ("" = main): [an EvalSet per template]} of the task's evaluation side."""
    task = task.evaluation
    prompts = task.prompts if bundle.head == "lm" and task.prompts else [None]
    shared = _key(task, bundle, data_dir, n=train.max_eval_samples, max_length=train.max_length,
                  demos=[d.get("idx") for d in demos])  # fingerprints the tokenizer and data files once
    out = {}
    # a k-shot evaluation split, unless in-context learning brings its own demonstrations
    k_shot = task.demonstrations["eval"] if task.demonstrations and not demos else None
    solved = load_rows(task, "demos", data_dir) if k_shot is not None else []

    def build(name: str, rows: list[dict], prompt) -> EvalSet:
        if name == k_shot:
            return fixed_shot_features(task, bundle, rows, solved, train.max_length, prompt)
        return eval_features(task, bundle, rows, train.max_length, prompt, demos)

    for name, split in eval_splits(task).items():
        rows = load_rows(task, split, data_dir)[: train.max_eval_samples]
        out[name] = []
        for i, prompt in enumerate(prompts):
            key = {**shared, "split": split, "template": i}
            out[name].append(EvalSet(**cached(key, lambda: asdict(build(name, rows, prompt)))))
    return out
