"""Compare two results stores cell by cell: two library versions, two machines, before and after a change.

For every cell id present in both, each figure (params, memory, scores, time, flops) is judged by its
rule in the figure registry (`bench.judging.judge`, the same rule the regression gate applies): exact
and versioned figures and scores beyond their tolerance are flagged; machine-dependent figures
(measured memory, times) only warn. A status change (ok -> failed, ...) is always flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.env import environment_difference
from bench.errors import BadInput
from bench.figures import SECTIONS as FIGURE_SECTIONS
from bench.fmt import cell_label, missing
from bench.judging import Tolerances, judge, rule_of
from bench.run.store import Store, flatten

SECTIONS = tuple(f"{section}." for section in (*FIGURE_SECTIONS, "scores"))
DEFAULTS = Tolerances(score_abs=0.5)  # two stores side by side: a half-point move in a score is worth seeing


@dataclass
class Change:
    figure: str
    a: object
    b: object
    rule: str  # the figure's rule (bench.judging.RULES)
    verdict: str  # same | ok (within tolerance) | flag | warn


@dataclass
class CellDiff:
    suite: str
    id: str
    label: str
    model: str
    task: str
    seed: object
    changes: list[Change] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(c.verdict == verdict for c in self.changes)


@dataclass
class Comparison:
    cells: list[CellDiff]
    only_a: list[str]
    only_b: list[str]
    tolerances: Tolerances
    environment: str | None = None  # a warning naming the packages whose versions differ between A and B

    def to_json(self) -> dict:
        return {"tolerances": asdict(self.tolerances), "environment": self.environment, "only_a": self.only_a,
                "only_b": self.only_b, "flagged": sum(c.count("flag") for c in self.cells),
                "warnings": sum(c.count("warn") for c in self.cells), "cells": [asdict(c) for c in self.cells]}


def figures(record: dict) -> dict:
    """Status and every figure of the compared sections, by its flattened name."""
    row = flatten(record)
    out = {"status": row["status"]}
    out.update({k: v for k, v in row.items() if k.startswith(SECTIONS)})
    return out


def diff_cell(a: dict, b: dict, tol: Tolerances) -> CellDiff:
    cell = a["cell"]
    fa, fb = figures(a), figures(b)
    diff = CellDiff(cell.get("suite"), cell["id"], cell_label(cell), cell["model"],
                    cell["task"], cell["seed"])
    same_torch = (a.get("env") or {}).get("torch") == (b.get("env") or {}).get("torch")
    for name in sorted(set(fa) | set(fb), key=lambda n: (n != "status", n)):
        verdict, _ = judge(name, fa.get(name), fb.get(name), tol, same_torch)
        diff.changes.append(Change(name, fa.get(name), fb.get(name), rule_of(name), verdict))
    return diff


def load_records(path: str | Path, suite: str | None, flag: str) -> dict[tuple, dict]:
    """Records by (suite, cell id): a store root (all suites, or --suite), or one suite's folder."""
    root = Path(path)
    if not root.is_dir():
        raise BadInput(f"results folder not found: {root}", flag)
    if suite is None and any(root.glob("*.json")):
        root, suite = root.parent, root.name  # a suite's own folder, e.g. results/smoke
    records, _ = Store(root).records(suite)
    if not records:
        raise BadInput(f"no records in {root / suite if suite else root}", flag)
    return {(r["cell"].get("suite"), r["cell"]["id"]): r for r in records}


def compare(path_a: str | Path, path_b: str | Path, suite: str | None = None,
            tol: Tolerances = DEFAULTS) -> Comparison:
    a = load_records(path_a, suite, "RESULTS_A")
    b = load_records(path_b, suite, "RESULTS_B")
    both = [k for k in sorted(a) if k in b]
    environment = environment_difference([r.get("env") for r in a.values()], [r.get("env") for r in b.values()])
    return Comparison([diff_cell(a[k], b[k], tol) for k in both],
                      [f"{s}/{i}" for s, i in sorted(set(a) - set(b))],
                      [f"{s}/{i}" for s, i in sorted(set(b) - set(a))], tol, environment)


def show(value) -> str:
    if missing(value):
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def change_text(c: Change) -> str:
    text = f"{c.figure}: {show(c.a)} -> {show(c.b)}"
    if isinstance(c.a, (int, float)) and isinstance(c.b, (int, float)) and not missing(c.a) and not missing(c.b):
        text += f" ({c.b - c.a:+.6g}" + (f", {100 * (c.b - c.a) / abs(c.a):+.1f}%)" if c.a else ")")
    return text


def render(comparison: Comparison) -> str:
    """Per cell, every figure that changed (FLAG beyond tolerance, warn for time); then a summary."""
    tol = comparison.tolerances
    lines = [f"tolerances: scores ±{tol.score_abs:g} points, measured memory warns beyond ±{100 * tol.memory_rtol:g}%, "
             f"time warns at ×{tol.time_warn_ratio:g}, activation bytes and FLOPs within "
             f"±{100 * tol.versioned_rtol:g}% across torch versions, everything else exact"]
    if comparison.environment:
        lines.insert(0, comparison.environment)
    for cell in comparison.cells:
        changed = [c for c in cell.changes if c.verdict != "same"]
        head = f"{cell.suite}/{cell.id} {cell.label} {cell.model} {cell.task} seed={cell.seed}"
        if not changed:
            lines.append(f"{head}: {len(cell.changes)} figures identical")
            continue
        lines.append(f"{head}: {len(changed)} of {len(cell.changes)} figures changed")
        mark = {"flag": "FLAG", "warn": "warn", "ok": "ok  "}
        lines += [f"  {mark[c.verdict]} {change_text(c)}" for c in changed]
    flagged = sum(c.count("flag") for c in comparison.cells)
    warned = sum(c.count("warn") for c in comparison.cells)
    lines.append(f"{len(comparison.cells)} cells in both: {flagged} flagged change(s), {warned} warning(s); "
                 f"{len(comparison.only_a)} only in A, {len(comparison.only_b)} only in B")
    lines += [f"only in A: {k}" for k in comparison.only_a] + [f"only in B: {k}" for k in comparison.only_b]
    return "\n".join(lines)
