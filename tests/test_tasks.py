"""Task definitions, synthetic data and features."""

import pytest
import torch

from bench.errors import BadInput
from bench.models import REGISTRY, load_bundle
from bench.tasks import builtin_tasks, load_task_file, synthetic
from bench.tasks.data import load_rows
from bench.tasks.evaluate import sequence_logprob
from bench.tasks.features import IGNORE, collate, eval_features, train_features


def test_synthetic_data_is_deterministic_and_labelled_by_its_rule():
    rows = synthetic.polarity(200, seed=5)
    assert rows == synthetic.polarity(200, seed=5) and rows != synthetic.polarity(200, seed=6)
    for row in rows:
        words = row["sentence"].split()
        pos = sum(w in synthetic.POSITIVE for w in words)
        neg = sum(w in synthetic.NEGATIVE for w in words)
        assert row["label"] == int(pos > neg) and pos != neg
    assert 0.35 < sum(r["label"] for r in rows) / len(rows) < 0.65  # near balanced: chance is 50%
    for row in synthetic.digits(20, seed=1):
        assert row["words"].split() == [synthetic.DIGIT_WORDS[int(d)] for d in row["digits"].split()]


def test_train_and_eval_splits_differ():
    task = builtin_tasks()["synth-polarity"]
    train, evals = load_rows(task, "train"), load_rows(task, "eval")
    assert len(train) == 4000 and len(evals) == 500 and train[:50] != evals[:50]


def test_task_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  - name: t\n    type: classification\n    source: {synthetic: polarity}\n"
                    "    text: [sentence]\n    label: label\n    labels: [a, b]\n    metrics: [acuracy]\n")
    with pytest.raises(BadInput) as info:
        load_task_file(path)
    assert "unknown metric 'acuracy'" in info.value.message and "did you mean 'accuracy'" in info.value.message
    assert info.value.where == f"{path}:8"


def test_decoder_features_mask_the_prompt():
    bundle = load_bundle(REGISTRY["tiny-gpt2"], "classification", 2, seed=0)
    task = builtin_tasks()["synth-polarity"]
    row = {"sentence": "a great movie", "label": 1}
    (feat,) = train_features(task, bundle, [row], 64)
    tok = bundle.tokenizer
    target = tok(" positive", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert feat["input_ids"][-len(target):] == target
    assert feat["labels"] == [IGNORE] * (len(feat["input_ids"]) - len(target)) + target
    assert tok.decode(feat["input_ids"][1:-len(target)]).strip() == "review: a great movie sentiment:"


def test_encoder_decoder_features_put_the_answer_in_labels():
    bundle = load_bundle(REGISTRY["tiny-t5"], "generation", None, seed=0)
    task = builtin_tasks()["synth-digits"]
    (feat,) = train_features(task, bundle, [{"digits": "1 2", "words": "one two"}], 64)
    assert bundle.tokenizer.decode(feat["labels"], skip_special_tokens=True).strip() == "one two"
    assert feat["labels"][-1] == bundle.tokenizer.eos_token_id
    evalset = eval_features(task, bundle, [{"digits": "1 2", "words": "one two"}], 64)
    assert evalset.gold == [["one two"]]


def test_sequence_logprob_matches_a_direct_computation():
    bundle = load_bundle(REGISTRY["tiny-gpt2"], "classification", 2, seed=0)
    model = bundle.model.eval()
    feats = [{"input_ids": [1, 5, 6, 7, 8], "labels": [IGNORE, IGNORE, IGNORE, 7, 8]},
             {"input_ids": [1, 9, 10], "labels": [IGNORE, IGNORE, 10]}]
    batch = collate(feats, bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        got = sequence_logprob(model, dict(batch))
        for feat, value in zip(feats, got):
            ids = torch.tensor([feat["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            expected = sum(logp[t - 1, feat["input_ids"][t]] for t, y in enumerate(feat["labels"]) if y != IGNORE)
            assert value == pytest.approx(float(expected), abs=1e-4)
