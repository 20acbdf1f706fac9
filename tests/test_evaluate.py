"""bench/cell/evaluate.py: the batches evaluation predicts in (two groups, each longest first) and that the
predictions come back in the examples' order, equal to predicting each example alone."""

from __future__ import annotations

import types

import pytest

from bench.cell import evaluate
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
    bundle = types.SimpleNamespace(head="classifier", kind="encoder", tokenizer=types.SimpleNamespace(pad_token_id=0))
    task = types.SimpleNamespace(type="classification")
    features = [{"input_ids": [i] + [0] * (n - 1)} for i, n in enumerate(lengths)]
    preds = evaluate.predict(bundle, Model(), EvalSet(features, [0] * len(lengths)), task, 3, "cpu", clock=Clock)
    assert preds == [i * 10 for i in range(len(lengths))]
    # first group: examples 0-5 (lengths 3 7 7 1 5 2); the rest: 6-12 (9 4 6 8 2 5 3)
    assert batches == [[1, 2, 4], [0, 5, 3], [6, 9, 8], [11, 7, 12], [10]]
    assert inside == [True, True, False, False, False]
    assert evaluate.timed_examples(13, 3) == 6 and evaluate.timed_examples(5, 3) == 5


def test_one_length_batches_never_mix_lengths_and_stay_within_the_batch_size():
    lengths = [2, 3, 1, 2, 3, 2, 2, 2, 2, 2]
    seen = []

    def predict_batch(chunk):
        seen.append([len(x) for x in chunk])
        return [x[0] for x in chunk]

    items = [[i] * n for i, n in enumerate(lengths)]
    assert evaluate._longest_first(items, 4, len, predict_batch, same_length=True) == list(range(len(lengths)))
    assert seen == [[3, 3], [2, 2, 2, 2], [2, 2, 2], [1]]
    seen.clear()
    evaluate._longest_first(items, 4, len, predict_batch)
    assert seen == [[3, 3, 2, 2], [2, 2, 2, 2], [2, 1]]


@pytest.mark.parametrize("model_name,task_name,method", [
    # classifier heads: regression's outputs vary from example to example, random tiny models' classes do not
    ("tiny-encoder", "synth-intensity", None), ("tiny-gpt2", "synth-intensity", None),
    ("tiny-t5", "synth-choice", None), ("tiny-llama", "synth-choice", None), ("tiny-gpt2", "synth-digits", None),
    ("tiny-t5", "synth-digits", None),
    # peft's soft prompts on decoders drop the position ids: there a generation batch holds one length only
    ("tiny-gpt2", "synth-intensity", "prompt-tuning"), ("tiny-llama", "synth-digits", "prompt-tuning"),
    ("tiny-gpt2", "synth-digits", "p-tuning"), ("tiny-llama", "synth-digits", "prefix-tuning-peft"),
    ("tiny-llama", "synth-choice", "prompt-tuning"), ("tiny-gpt2", "synth-digits", "prefix-tuning")])
def test_batched_predictions_are_each_example_predicted_alone(model_name, task_name, method, monkeypatch,
                                                              tiny_bundle):
    """On real tiny models (a classifier head on an encoder and a decoder; rank classification on an
    encoder-decoder and a decoder; generation, left-padded on a decoder; soft prompts and prefixes), predicting
    in sorted batches of 4 gives each example's own prediction (batch 1), in order: the sort is undone and
    padding changes nothing beyond rounding. Each group's batches really are longest first, which the
    examples' order is not; where padding would move positions, no batch mixes lengths. The weights are
    perturbed (seeded) so that predictions differ from example to example."""
    import torch

    from bench import methods
    from bench.config import TrainConfig
    from bench.methods.base import ApplyContext
    from bench.tasks.data import load_rows
    from bench.tasks.features import eval_features
    from bench.tasks.registry import builtin_tasks

    task = builtin_tasks()[task_name]
    bundle = tiny_bundle(model_name, task=task)
    model = bundle.model
    if method:
        chosen = methods.get(method)
        model = chosen.apply(model, chosen.resolve({}, bundle.arch, str),
                             ApplyContext(bundle, TrainConfig(), 10, None, "cpu", task, [])).model
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad or not method:
                p.add_(torch.randn_like(p) * 0.5)
    evalset = eval_features(task, bundle, load_rows(task, "validation")[:23], 32)
    alone = [evaluate.predict(bundle, model, evalset.rows(i, i + 1), task, 1, "cpu")[0] for i in range(23)]
    assert len(set(map(str, alone))) > 1  # a model that predicts one thing would prove nothing about order
    groups, collate, predict_group = [], evaluate.collate, evaluate._predict_group

    def width(f):  # what the sort reads: the input, and an answer option's tokens (rank classification)
        return len(f["input_ids"]) + (len(f["labels"]) if isinstance(f.get("labels"), list) else 0)

    monkeypatch.setattr(evaluate, "_predict_group", lambda *a: groups.append([]) or predict_group(*a))
    monkeypatch.setattr(evaluate, "collate", lambda chunk, *a, **k: groups[-1].append(list(map(width, chunk)))
                        or collate(chunk, *a, **k))
    options_collate = evaluate.options_collate  # an encoder-decoder's rank classification: each prompt once
    monkeypatch.setattr(evaluate, "options_collate", lambda prompts, *a, **k: groups[-1].append(list(map(len, prompts)))
                        or options_collate(prompts, *a, **k))
    batched = evaluate.predict(bundle, model, evalset, task, 4, "cpu")
    if task.type == "regression":
        assert batched == pytest.approx(alone, rel=1e-5, abs=1e-5)
    else:
        assert batched == alone
    assert len(groups) == 2
    one_length = evaluate.padding_moves_positions(bundle, model)
    assert one_length == (bundle.kind == "decoder" and method not in (None, "prefix-tuning"))
    for widths in groups:
        assert all(w == sorted(w, reverse=True) for w in widths)
        assert [w[0] for w in widths] == sorted((w[0] for w in widths), reverse=True)
        # classifier and rank-classification batches pad on the right, after every token a causal model
        # reads: the length rule is generation's (left-padded) only
        generation = bundle.head != "classifier" and evalset.choices is None
        assert all(len(set(w)) == 1 for w in widths) or not (one_length and generation)
        assert any(len(set(w)) > 1 for w in widths) or one_length and generation
    in_order = [len(f["input_ids"]) for f in evalset.features]
    assert in_order != sorted(in_order, reverse=True)  # there was something to sort
