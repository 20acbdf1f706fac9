"""Each metric against a value computed by hand (in the comments) on a tiny fixture."""

import math

import pytest

from bench.tasks import metrics

PREDS, LABELS = [1, 0, 1, 1], [1, 0, 0, 1]  # TP=2 TN=1 FP=1 FN=0


def m(name, preds, refs):
    return metrics.METRICS[name].fn(preds, refs)


def test_classification_metrics():
    assert m("accuracy", PREDS, LABELS) == pytest.approx(75.0)  # 3 of 4
    assert m("f1", PREDS, LABELS) == pytest.approx(80.0)  # P=2/3, R=1 -> 2·(2/3)/(5/3) = 0.8
    # class 0: P=1, R=1/2 -> F1=2/3; class 1: 0.8; mean 0.7333
    assert m("macro_f1", PREDS, LABELS) == pytest.approx(100 * (2 / 3 + 0.8) / 2)
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(3·2·2·1)
    assert m("mcc", PREDS, LABELS) == pytest.approx(100 * 2 / math.sqrt(12))


def test_regression_metrics():
    # deviations (-1,0,1) and (-4/3,-1/3,5/3): cov 3, norms sqrt(2) and sqrt(42)/3 -> r = 9/sqrt(84)
    assert m("pearson", [1, 2, 3], [1, 2, 4]) == pytest.approx(100 * 9 / math.sqrt(84))
    assert m("spearman", [1, 2, 3], [1, 2, 4]) == pytest.approx(100.0)  # same ranks
    assert m("spearman", [3, 2, 1], [1, 2, 4]) == pytest.approx(-100.0)
    assert metrics.compute(["pearson"], [1, 1, 1], [1, 2, 3]) == {"pearson": None}  # undefined, not NaN


def test_exact_match_uses_any_reference():
    assert m("exact_match", ["a b", "c", "x"], [["a b"], ["d", "c "], ["y"]]) == pytest.approx(200 / 3)


def test_bleu_hand_computed():
    # hyp "a b c d e" vs ref "a b c d f": p1..p4 = 4/5, 3/4, 2/3, 1/2, equal lengths (BP = 1)
    expected = 100 * (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert m("bleu", ["a b c d e"], [["a b c d f"]]) == pytest.approx(expected, abs=1e-6)
    # a second reference that matches exactly makes every n-gram match
    assert m("bleu", ["a b c d e"], [["a b c d f", "a b c d e"]]) == pytest.approx(100.0)


def test_chrf_hand_computed():
    # chrF (beta=2, char n-grams 1..6, spaces dropped): "ab" vs "ac" has unigram P=R=1/2 and bigram
    # P=R=0; longer orders have no n-grams and do not count. Mean P = mean R = 1/4 -> F = 1/4.
    assert m("chrf", ["ab"], [["ac"]]) == pytest.approx(25.0)
    assert m("chrf", ["same text"], [["same text"]]) == pytest.approx(100.0)


def test_rouge_hand_computed():
    preds, refs = ["the cat sat"], [["the cat was here"]]
    assert m("rouge1", preds, refs) == pytest.approx(100 * 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # 2 shared
    assert m("rouge2", preds, refs) == pytest.approx(100 * 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))  # "the cat"
    assert m("rougeL", preds, refs) == pytest.approx(100 * 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # LCS 2
    assert m("rouge1", preds, [["x y", "the cat sat"]]) == pytest.approx(100.0)  # best reference


def test_every_metric_declares_direction_and_definition():
    for name, metric in metrics.METRICS.items():
        assert isinstance(metric.higher_is_better, bool) and metric.definition, name
