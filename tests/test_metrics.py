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


def _label_cases():
    """Random label sequences (binary and 3-class, short and long, skewed) and degenerate ones."""
    import random

    rng = random.Random(0)
    cases = [([0, 0, 0], [0, 0, 0]), ([1, 1], [1, 1]), ([0, 0], [1, 1]), ([1, 0], [1, 0]), ([2, 2, 2], [0, 1, 2]),
             ([0], [1]), ([1, 1, 1, 1], [0, 0, 0, 1])]
    for _ in range(300):
        n, k = rng.choice([1, 2, 5, 17, 200, 1043]), rng.choice([2, 2, 3])
        skew = rng.random()
        labels = [rng.randrange(k) if rng.random() > skew else 0 for _ in range(n)]
        preds = [y if rng.random() < rng.random() else rng.randrange(k) for y in labels]
        cases.append((preds, labels))
    return cases


def test_label_metrics_agree_with_scikit_learn():
    """The formulas (bench/tasks/metrics.py) against scikit-learn's implementations, the independent computation:
    binary F1 of label 1 and MCC exactly (the same integer counts, one division), macro F1 to 1e-12 (its mean
    is summed exactly rounded, numpy's pairwise)."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    for preds, labels in _label_cases():
        if set(preds) | set(labels) <= {0, 1}:
            assert m("f1", preds, labels) == 100.0 * f1_score(labels, preds, pos_label=1, average="binary",
                                                               zero_division=0), (preds, labels)
        assert m("mcc", preds, labels) == 100.0 * matthews_corrcoef(labels, preds), (preds, labels)
        assert m("macro_f1", preds, labels) == pytest.approx(
            100.0 * f1_score(labels, preds, average="macro", zero_division=0), rel=1e-12, abs=1e-12), (preds, labels)


def test_correlations_agree_with_scipy():
    """Pearson and Spearman (ties averaged) against SciPy's on random scores, with ties, negative and huge values."""
    import random

    from scipy.stats import pearsonr, spearmanr

    rng = random.Random(1)
    for _ in range(200):
        n = rng.choice([2, 3, 10, 300])
        labels = [rng.choice([0.0, 1.0, 2.5, 5.0]) if rng.random() < 0.5 else rng.uniform(0, 5) for _ in range(n)]
        preds = [y * rng.uniform(-2, 3) + rng.gauss(0, 1) * rng.choice([1e-3, 1, 1e6]) for y in labels]
        if rng.random() < 0.3:
            preds = [round(p) for p in preds]  # many ties
        if len(set(preds)) < 2 or len(set(labels)) < 2:
            continue
        assert m("pearson", preds, labels) == pytest.approx(100 * pearsonr(preds, labels)[0], rel=1e-9, abs=1e-9)
        assert m("spearman", preds, labels) == pytest.approx(100 * spearmanr(preds, labels)[0], rel=1e-9, abs=1e-9)
    assert metrics._ranks([3.0, 1.0, 3.0, 2.0, 3.0]) == [4.0, 1.0, 4.0, 2.0, 4.0]  # three tied at ranks 3-5


@pytest.mark.parametrize("preds", [[math.inf, -math.inf, 1.0], [math.nan, 2.0, 3.0], [math.inf, 2.0, 3.0],
                                   [1.0, 2.0, -math.inf]])
def test_correlations_of_non_finite_predictions_are_null_where_scipy_has_no_value(preds):
    """Overflowed outputs (inf, NaN) never score as a correlation SciPy would not give: Pearson is null with any
    of them; Spearman ranks infinities as SciPy does and is null with a NaN (it once read NaN as 100)."""
    from scipy.stats import pearsonr, spearmanr

    labels = [1.0, 2.0, 3.0]
    for name, reference in (("pearson", pearsonr), ("spearman", spearmanr)):
        expected = float(reference(preds, labels)[0])
        got = metrics.compute([name], preds, labels)[name]
        assert got is None if math.isnan(expected) else got == pytest.approx(100 * expected), (name, preds, got)


def test_mean_of_all_is_unknown_when_a_part_is():
    from bench.fmt import mean_of_all

    assert mean_of_all([80.0, 90.0, 100.0]) == 90.0
    assert mean_of_all([80.0, None]) is None and mean_of_all([80.0, float("nan")]) is None
    assert mean_of_all([]) is None
