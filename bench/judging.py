"""How a change in a figure between two records of one cell is judged: the rule that `compare` and `regress` share.

Each figure of the registry (bench/figures.py) names its rule (Figure.rule, a key of RULES); `judge` applies it
with the numbers in Tolerances. docs/measurement.md's table of the rules is `rules_table` (`make docs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import fmt
from bench.figures import FIGURES, SCORES, figure

# How a change between two records of one cell is judged (`judge`):
RULES = {
    "exact": "equal: a function of code and configuration; any change is a regression",
    "versioned": "equal on the same torch version; within `versioned_rtol` across versions (kernels differ in "
                 "what they save and count)",
    "score": "within `score_abs` points (per metric: `score_abs_per_metric`)",
    "measured": "read from the allocator or the OS, so it moves with the machine: beyond `memory_rtol` of the "
                "first value it warns",
    "timing": "wall-clock, so it moves with the machine and its load: when one is `time_warn_ratio` times the "
              "other it warns",
    "loss": "a loss in nats: within `loss_abs` (training on a GPU is not bit-reproducible)",
}


def rule_of(key: str) -> str:
    """The rule that judges a flattened figure name; unregistered names (status, ...) are exact."""
    registered = figure(key)
    return registered.rule if registered else "exact"


@dataclass(frozen=True)
class Tolerances:
    """The numbers the rules use; `compare` takes them from flags, `regress` from a tolerance file."""

    score_abs: float = 1.0  # points on the 0-100 scale
    score_abs_per_metric: dict = field(default_factory=dict)
    versioned_rtol: float = 0.05  # fraction of the first value, across torch versions
    memory_rtol: float = 0.10  # fraction of the first value
    time_warn_ratio: float = 1.5
    loss_abs: float = 0.05  # nats per token

    def score(self, metric: str) -> float:
        return self.score_abs_per_metric.get(metric, self.score_abs)


def judge(key: str, a, b, tol: Tolerances, same_torch: bool = True) -> tuple[str, str]:
    """(verdict, why) for a figure that is `a` in the first record and `b` in the second.

    Verdicts: same; ok (within tolerance); flag (a change the figure's rule does not allow: a regression
    for `regress`); warn (a machine-dependent figure moved). A figure present on one side only is
    flagged, or warned about for machine-dependent figures. Unregistered figures are compared exactly.
    """
    rule = rule_of(key)
    soft = rule in ("measured", "timing")
    if a == b or (fmt.missing(a) and fmt.missing(b)):
        return "same", ""
    if fmt.missing(a) or fmt.missing(b) or not all(_number(v) for v in (a, b)):
        why = "appeared" if fmt.missing(a) else "vanished" if fmt.missing(b) else "changed"
        return ("warn" if soft else "flag"), why
    if rule == "exact" or (rule == "versioned" and same_torch):
        return "flag", "must be equal" if rule == "exact" else "must be equal on the same torch version"
    if rule == "versioned":
        return ("ok", "") if abs(b - a) <= tol.versioned_rtol * abs(a) else \
            ("flag", f"beyond ±{tol.versioned_rtol:.0%} across torch versions")
    if rule == "score":
        limit = tol.score(key[len("scores."):])
        return ("ok", "") if abs(b - a) <= limit else ("flag", f"beyond ±{limit:g} points")
    if rule == "measured":
        return ("ok", "") if abs(b - a) <= tol.memory_rtol * abs(a) else \
            ("warn", f"beyond ±{tol.memory_rtol:.0%} (machine-dependent: warns)")
    if rule == "loss":
        return ("ok", "") if abs(b - a) <= tol.loss_abs else ("flag", f"beyond ±{tol.loss_abs:g} nats")
    low, high = sorted((abs(a), abs(b)))
    if low == 0 or high / low >= tol.time_warn_ratio:
        return "warn", f"×{b / a:.2f} (machine-dependent: warns)" if a else "from zero (machine-dependent: warns)"
    return "ok", ""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rules_table() -> str:
    """The rules `compare` and `regress` apply, with the figures each one covers."""
    rows = []
    for rule, meaning in RULES.items():
        covered = ", ".join(f"`{f.key}`" for f in SCORES) if rule == "score" else \
            ", ".join(f"`{f.key}`" for f in FIGURES.values() if f.rule == rule)
        rows.append(f"| {rule} | {covered} | {meaning} |")
    return "\n".join(["| rule | figures | how a change is judged |", "|---|---|---|", *rows])
