"""Metrics, all on a 0-100 scale (GLUE's convention): accuracy 91.2, MCC 55.0, BLEU 27.3.

Classification and regression metrics take (predictions, labels); generation metrics take
(predictions, references) where references is one list of strings per example. A metric that is
undefined on the given data (e.g. a correlation with constant predictions) is None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    fn: Callable[[Sequence, Sequence], float]
    higher_is_better: bool
    kind: str  # label | regression | text
    definition: str


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def accuracy(preds, labels):
    return 100.0 * sum(int(p == y) for p, y in zip(preds, labels)) / len(labels)


def f1(preds, labels):
    from sklearn.metrics import f1_score

    return 100.0 * f1_score(labels, preds, pos_label=1, average="binary", zero_division=0)


def macro_f1(preds, labels):
    from sklearn.metrics import f1_score

    return 100.0 * f1_score(labels, preds, average="macro", zero_division=0)


def mcc(preds, labels):
    from sklearn.metrics import matthews_corrcoef

    return 100.0 * matthews_corrcoef(labels, preds)


def pearson(preds, labels):
    from scipy.stats import pearsonr

    if len(set(preds)) < 2 or len(set(labels)) < 2:
        return None
    return _finite(100.0 * pearsonr(preds, labels)[0])


def spearman(preds, labels):
    from scipy.stats import spearmanr

    if len(set(preds)) < 2 or len(set(labels)) < 2:
        return None
    return _finite(100.0 * spearmanr(preds, labels)[0])


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
    "bleu": Metric(bleu, True, "text", "sacreBLEU corpus BLEU (13a tokenizer), all references"),
    "chrf": Metric(chrf, True, "text", "sacreBLEU corpus chrF, all references"),
    "rouge1": Metric(_rouge("rouge1"), True, "text", "ROUGE-1 F, best reference per example, mean x 100"),
    "rouge2": Metric(_rouge("rouge2"), True, "text", "ROUGE-2 F, best reference per example, mean x 100"),
    "rougeL": Metric(_rouge("rougeL"), True, "text", "ROUGE-L F, best reference per example, mean x 100"),
}


def compute(names: Sequence[str], preds: Sequence, refs: Sequence) -> dict[str, float | None]:
    out = {}
    for name in names:
        value = METRICS[name].fn(preds, refs)
        out[name] = None if value is None else _finite(value)
    return out
