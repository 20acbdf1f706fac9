"""Metrics, all on a 0-100 scale (GLUE's convention): accuracy 91.2, MCC 55.0, BLEU 27.3.

Classification and regression metrics take (predictions, labels); generation metrics take
(predictions, references) where references is one list of strings per example. A metric that is
undefined on the given data (e.g. a correlation with constant predictions) is None, never NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    fn: Callable[[Sequence, Sequence], float]
    higher_is_better: bool
    kind: str  # label | regression | text
    definition: str
    library: str | None = None  # the module it imports to compute (the fork server preloads it for grids using it)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def accuracy(preds, labels):
    return 100.0 * sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)


# Label and correlation metrics are computed here from their formulas, in exact integer counts where they
# are counts, rather than by scikit-learn and SciPy: importing those costs about a second in every run's
# fork server. tests/test_metrics.py checks each against the library on random and degenerate inputs.

def _tallies(preds, labels) -> tuple[Counter, Counter, Counter]:
    """Per class, exact integer counts: how often it is gold, how often predicted, how often both."""
    return Counter(labels), Counter(preds), Counter(y for p, y in zip(preds, labels) if p == y)


def _f1_of(label, gold: Counter, predicted: Counter, hits: Counter) -> float:
    """F1 of one class: 2·TP / (2·TP + FP + FN) = 2·TP / (predicted + gold); 0 when both are 0."""
    both = predicted[label] + gold[label]
    return 2 * hits[label] / both if both else 0.0


def f1(preds, labels):
    return 100.0 * _f1_of(1, *_tallies(preds, labels))


def macro_f1(preds, labels):
    """The mean of per-class F1 over every class that is predicted or gold (the sum exactly rounded)."""
    tallies = _tallies(preds, labels)
    classes = sorted(set(tallies[0]) | set(tallies[1]))
    return 100.0 * math.fsum(_f1_of(c, *tallies) for c in classes) / len(classes)


def mcc(preds, labels):
    """Matthews correlation, multi-class (Gorodkin's R_K): (c·n − Σ t_k·p_k) / sqrt((n² − Σ p_k²)(n² − Σ t_k²)),
    c correct, n examples, t_k / p_k how often class k is gold / predicted; 0 when either factor is 0."""
    gold, predicted, hits = _tallies(preds, labels)
    n, correct = len(labels), sum(hits.values())
    spread = (n * n - sum(v * v for v in predicted.values())) * (n * n - sum(v * v for v in gold.values()))
    if spread == 0:
        return 0.0
    return 100.0 * ((correct * n - sum(gold[k] * predicted[k] for k in gold)) / math.sqrt(spread))


def _correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's r: Σ dx·dy / sqrt(Σ dx² · Σ dy²) with deviations from the means, sums exactly rounded."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    mx, my = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    dx, dy = [x - mx for x in xs], [y - my for y in ys]
    spread = math.fsum(a * a for a in dx) * math.fsum(b * b for b in dy)
    r = math.fsum(a * b for a, b in zip(dx, dy)) / math.sqrt(spread)
    return r if math.isnan(r) else max(-1.0, min(1.0, r))  # clamped, but a NaN must stay NaN (then null)


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for i in order[start: stop + 1]:
            ranks[i] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def pearson(preds, labels):
    """Null where undefined: constant values, or any NaN or infinity (a model whose outputs overflowed)."""
    if len(set(preds)) < 2 or len(set(labels)) < 2 or not all(map(math.isfinite, [*preds, *labels])):
        return None
    return _finite(100.0 * _correlation(preds, labels))


def spearman(preds, labels):
    """Pearson's r of the ranks (ties averaged); infinities have ranks, NaNs do not (null, as constant values)."""
    if len(set(preds)) < 2 or len(set(labels)) < 2 or any(map(math.isnan, [*preds, *labels])):
        return None
    return _finite(100.0 * _correlation(_ranks(list(preds)), _ranks(list(labels))))


def exact_match(preds, refs):
    return 100.0 * sum(int(p.strip() in {r.strip() for r in rs}) for p, rs in zip(preds, refs)) / len(refs)


def _ref_streams(refs: Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu wants one stream per reference position; pad short lists by repeating their first."""
    width = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]


def bleu(preds, refs):
    import sacrebleu

    return sacrebleu.corpus_bleu(list(preds), _ref_streams(refs)).score


def chrf(preds, refs):
    import sacrebleu

    return sacrebleu.corpus_chrf(list(preds), _ref_streams(refs)).score


def _rouge(key: str):
    def score(preds, refs):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer([key], use_stemmer=True)
        best = [max(scorer.score(r, p)[key].fmeasure for r in rs) for p, rs in zip(preds, refs)]
        return 100.0 * sum(best) / len(best)

    return score


METRICS: dict[str, Metric] = {
    "accuracy": Metric(accuracy, True, "label", "share of examples whose predicted label is the gold label"),
    "f1": Metric(f1, True, "label", "F1 of the positive class (label 1), binary tasks (GLUE MRPC/QQP)"),
    "macro_f1": Metric(macro_f1, True, "label", "unweighted mean of per-class F1 (CB)"),
    "mcc": Metric(mcc, True, "label", "Matthews correlation coefficient x 100 (CoLA)"),
    "pearson": Metric(pearson, True, "regression", "Pearson correlation x 100 (STS-B)"),
    "spearman": Metric(spearman, True, "regression", "Spearman rank correlation x 100 (STS-B)"),
    "exact_match": Metric(exact_match, True, "text", "share of outputs equal to a reference after strip()"),
    "bleu": Metric(bleu, True, "text", "sacreBLEU corpus BLEU (13a tokenizer), all references",
                   "sacrebleu"),
    "chrf": Metric(chrf, True, "text", "sacreBLEU corpus chrF, all references", "sacrebleu"),
    "rouge1": Metric(_rouge("rouge1"), True, "text", "ROUGE-1 F, best reference per example, mean x 100",
                     "rouge_score.rouge_scorer"),
    "rouge2": Metric(_rouge("rouge2"), True, "text", "ROUGE-2 F, best reference per example, mean x 100",
                     "rouge_score.rouge_scorer"),
    "rougeL": Metric(_rouge("rougeL"), True, "text", "ROUGE-L F, best reference per example, mean x 100",
                     "rouge_score.rouge_scorer"),
}


def compute(names: Sequence[str], preds: Sequence, refs: Sequence) -> dict[str, float | None]:
    out = {}
    for name in names:
        value = METRICS[name].fn(preds, refs)
        out[name] = None if value is None else _finite(value)
    return out
