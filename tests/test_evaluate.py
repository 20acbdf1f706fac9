"""bench/tasks/evaluate.py: the batches evaluation predicts in (two groups, each longest first) and that the
predictions come back in the examples' order, equal to predicting each example alone."""

from __future__ import annotations

import types

import pytest

from bench.tasks import evaluate
from bench.tasks.features import EvalSet


def test_predictions_come_in_groups_then_longest_first_and_back_in_order(monkeypatch):
    """Two groups, the first 2 × batch examples and the rest; each in batches taken longest first, ties in
    their order; the predictions in the examples' order. The first group is predicted inside the clock."""
    lengths = [3, 7, 7, 1, 5, 2, 9, 4, 6, 8, 2, 5, 3]
    batches, inside = [], []
    clock_on = [False]

    def collate(chunk, pad, left=False):
        batches.append([f["input_ids"][0] for f in chunk])
        inside.append(clock_on[0])
        return {"n": len(chunk)}

    class Clock:
        def __enter__(self):
            clock_on[0] = True

        def __exit__(self, *exc):
            clock_on[0] = False

    class Logits:
        def __init__(self, rows):
            self.rows = rows

        def float(self):
            return self

        def argmax(self, dim):
            return types.SimpleNamespace(tolist=lambda: [r * 10 for r in self.rows])

    class Model:
        def eval(self):
            pass

        def __call__(self, **batch):
            return types.SimpleNamespace(logits=Logits(batch["rows"]))

    monkeypatch.setattr(evaluate, "collate", collate)
    monkeypatch.setattr(evaluate, "to_device", lambda batch, device: {"rows": batches[-1]})
    bundle = types.SimpleNamespace(head="classifier", tokenizer=types.SimpleNamespace(pad_token_id=0))
    task = types.SimpleNamespace(type="classification")
    features = [{"input_ids": [i] + [0] * (n - 1)} for i, n in enumerate(lengths)]
    preds = evaluate.predict(bundle, Model(), EvalSet(features, [0] * len(lengths)), task, 3, "cpu", clock=Clock)
    assert preds == [i * 10 for i in range(len(lengths))]
    # first group: examples 0-5 (lengths 3 7 7 1 5 2); the rest: 6-12 (9 4 6 8 2 5 3)
    assert batches == [[1, 2, 4], [0, 5, 3], [6, 9, 8], [11, 7, 12], [10]]
    assert inside == [True, True, False, False, False]
    assert evaluate.timed_examples(13, 3) == 6 and evaluate.timed_examples(5, 3) == 5


@pytest.mark.parametrize("model_name,task_name", [("tiny-encoder", "synth-intensity"),
                                                  ("tiny-encoder", "synth-polarity"),
                                                  ("tiny-t5", "synth-choice"), ("tiny-llama", "synth-choice"),
                                                  ("tiny-gpt2", "synth-digits"), ("tiny-t5", "synth-digits")])
def test_batched_predictions_are_each_example_predicted_alone(model_name, task_name, monkeypatch):
    """On real tiny models (a classifier head, for regression and classification; rank classification on an
    encoder-decoder and a decoder; generation, left-padded on a decoder), predicting in sorted batches of 4
    gives each example's own prediction (batch 1), in order: the sort is undone and padding changes nothing
    beyond rounding. The batches really are longest first, which the examples' order is not."""
    from bench.models import REGISTRY, load_bundle
    from bench.tasks import builtin_tasks
    from bench.tasks.data import load_rows
    from bench.tasks.features import eval_features

    task = builtin_tasks()[task_name]
    bundle = load_bundle(REGISTRY[model_name], task.type, task.num_labels, seed=0)
    evalset = eval_features(task, bundle, load_rows(task, "validation")[:23], 32)
    alone = [evaluate.predict(bundle, bundle.model, evalset.rows(i, i + 1), task, 1, "cpu")[0] for i in range(23)]
    widths, collate = [], evaluate.collate

    def width(f):  # what the sort reads: the input, and an answer option's tokens (rank classification)
        return len(f["input_ids"]) + (len(f["labels"]) if isinstance(f.get("labels"), list) else 0)

    monkeypatch.setattr(evaluate, "collate", lambda chunk, *a, **k: widths.append(list(map(width, chunk)))
                        or collate(chunk, *a, **k))
    batched = evaluate.predict(bundle, bundle.model, evalset, task, 4, "cpu")
    if task.type == "regression":
        assert batched == pytest.approx(alone, abs=1e-5)
    else:
        assert batched == alone
    head = len(evalset.features[:8]) if evalset.choices is None else sum(map(len, evalset.choices[:8]))
    firsts, split = [w[0] for w in widths], -(-head // 4)  # the first group's batches
    assert all(w == sorted(w, reverse=True) for w in widths)
    assert firsts[:split] == sorted(firsts[:split], reverse=True)
    assert firsts[split:] == sorted(firsts[split:], reverse=True)
    in_order = [len(f["input_ids"]) for f in evalset.features]
    assert in_order != sorted(in_order, reverse=True)  # there was something to sort
