"""The regression gate: run a suite, compare every cell with a committed baseline, fail on regressions.

Each figure is judged by its rule in the figure registry (`bench.judging.judge`, shared with
`compare`): a flagged change is a regression, a machine-dependent figure (times, measured memory)
only warns. A baseline cell that is missing or did not end ok now is a regression; a new cell is
reported only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

from bench.config import check_keys, coerce
from bench.env import environment_difference
from bench.errors import BadInput, did_you_mean
from bench.files import atomic_write
from bench.fmt import cell_label
from bench.judging import Tolerances, judge
from bench.record import SCHEMA_VERSION
from bench.report.compare import figures, show
from bench.yamlfile import load_yaml

BASELINE_VERSION = 1

_TOLERANCE_KEYS = {"score_abs": float, "score_abs_per_metric": dict, "versioned_rtol": float,
                   "memory_rtol": float, "time_warn_ratio": float, "loss_abs": float}


def load_tolerances(path: str | None) -> Tolerances:
    if path is None:
        return Tolerances()
    doc = load_yaml(path)
    check_keys(doc.data, _TOLERANCE_KEYS, "tolerance", doc.where)
    values = {k: coerce(v, _TOLERANCE_KEYS[k], doc.where(k), k) for k, v in doc.data.items()}
    from bench.tasks.metrics import METRICS

    for key, value in values.items():  # coerce already refused NaN and infinities
        if isinstance(value, float) and not value >= (1 if key == "time_warn_ratio" else 0):
            raise BadInput(f"'{key}' must be {'a factor >= 1' if key == 'time_warn_ratio' else '>= 0'}, got {value:g}",
                           doc.where(key))
    per_metric = {}
    for m, v in values.get("score_abs_per_metric", {}).items():
        if m not in METRICS:
            raise BadInput(f"unknown metric '{m}'{did_you_mean(str(m), METRICS)}", doc.where("score_abs_per_metric", m),
                           METRICS)
        per_metric[m] = coerce(v, float, doc.where("score_abs_per_metric", m), m)
        if per_metric[m] < 0:
            raise BadInput(f"'{m}' must be >= 0, got {per_metric[m]:g}", doc.where("score_abs_per_metric", m))
    return Tolerances(**{**values, "score_abs_per_metric": per_metric})


@dataclass
class Finding:
    cell: str  # human-readable cell name
    figure: str
    baseline: object
    new: object
    level: str  # fail | warn | new
    why: str

    @property
    def delta(self):
        if isinstance(self.baseline, (int, float)) and isinstance(self.new, (int, float)):
            return self.new - self.baseline
        return None

    def severity(self) -> float:
        """For ordering, worst first: failures before warnings, larger relative changes first."""
        rank = {"fail": 2, "warn": 1, "new": 0}[self.level]
        d = self.delta
        rel = abs(d) / abs(self.baseline) if d is not None and self.baseline else math.inf
        return rank * 1e12 + (rel if math.isfinite(rel) else 1e11)


@dataclass
class Verdict:
    findings: list[Finding]
    compared: int
    environment: str | None = None  # a warning naming the packages whose versions differ from the baseline's

    @property
    def failed(self) -> bool:
        return any(f.level == "fail" for f in self.findings)

    def to_json(self) -> dict:
        return {"verdict": "fail" if self.failed else "pass", "line": self.line(), "compared": self.compared,
                "environment": self.environment,
                "findings": [{**{k: getattr(f, k) for k in ("cell", "figure", "baseline", "new", "level", "why")},
                              "delta": f.delta} for f in self.findings]}

    def line(self) -> str:
        fails = [f for f in self.findings if f.level == "fail"]
        warns = sum(f.level == "warn" for f in self.findings)
        new = sum(f.level == "new" for f in self.findings)
        cells = len({f.cell for f in fails})
        head = f"FAIL: {len(fails)} regression(s) in {cells} cell(s)" if fails else "PASS: no regression"
        return f"{head}; {self.compared} cells compared, {warns} warning(s), {new} new cell(s)"


def cell_name(entry: dict) -> str:
    return f"{entry['label']} · {entry['model']} · {entry['task']} · seed {entry['seed']}"


def summarise(record: dict) -> dict:
    """The part of a record the gate keeps in a baseline."""
    cell = record["cell"]
    kept = {name: value for name, value in figures(record).items()  # every metric; other figures when numeric
            if name.startswith("scores.") or (name != "status" and isinstance(value, (int, float)))}
    return {"label": cell_label(cell), "method": cell["method"], "model": cell["model"], "task": cell["task"],
            "seed": cell["seed"], "status": record["status"], "torch": (record.get("env") or {}).get("torch"),
            "figures": kept}


def make_baseline(suite: str, records: list[dict], env: dict) -> dict:
    return {"baseline_version": BASELINE_VERSION, "record_schema_version": SCHEMA_VERSION, "suite": suite,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "env": env,
            "cells": {r["cell"]["id"]: summarise(r) for r in sorted(records, key=lambda r: r["cell"]["id"])}}


def read_baseline(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise BadInput(f"cannot read the baseline: {e.strerror} (make one with --update)", "--baseline") from None
    except ValueError as e:
        raise BadInput(f"the baseline is not valid JSON: {e}", "--baseline") from None
    if not isinstance(data, dict) or data.get("baseline_version") != BASELINE_VERSION or "cells" not in data:
        raise BadInput(f"{path} is not a version-{BASELINE_VERSION} baseline (rewrite it with --update)",
                       "--baseline")
    return data


def write_baseline(path: str | Path, baseline: dict) -> None:
    atomic_write(Path(path), (json.dumps(baseline, indent=1) + "\n").encode())


def compare(baseline: dict, records: list[dict], tolerances: Tolerances) -> Verdict:
    current = {r["cell"]["id"]: summarise(r) for r in records}
    findings: list[Finding] = []
    for cid, old in baseline["cells"].items():
        name = cell_name(old)
        new = current.get(cid)
        if new is None:
            findings.append(Finding(name, "cell", old["status"], None, "fail", "in the baseline, missing now"))
            continue
        if old["status"] != new["status"]:
            if old["status"] == "ok":
                findings.append(Finding(name, "status", "ok", new["status"], "fail", "was ok"))
            else:  # nothing to compare against: the baseline is out of date, not the code
                findings.append(Finding(name, "status", old["status"], new["status"], "warn",
                                        "status changed; figures not compared (update the baseline)"))
            continue
        findings += _figures(name, old, new, tolerances)
    for cid, new in current.items():
        if cid not in baseline["cells"]:
            findings.append(Finding(cell_name(new), "cell", None, new["status"], "new", "not in the baseline"))
    findings.sort(key=Finding.severity, reverse=True)
    environment = environment_difference([baseline.get("env")], [r.get("env") for r in records])
    return Verdict(findings, sum(1 for cid in baseline["cells"] if cid in current), environment)


def _figures(name: str, old: dict, new: dict, tol: Tolerances) -> list[Finding]:
    a, b = old["figures"], new["figures"]
    same_torch = old.get("torch") == new.get("torch")
    out = []
    for key in sorted(set(a) | set(b)):
        verdict, why = judge(key, a.get(key), b.get(key), tol, same_torch)
        if verdict in ("flag", "warn"):
            out.append(Finding(name, key, a.get(key), b.get(key), "fail" if verdict == "flag" else "warn", why))
    return out


def render(verdict: Verdict, markdown: bool = False) -> str:
    warning = f"{verdict.environment}\n" if verdict.environment else ""
    return warning + _render_findings(verdict, markdown)


def _rows(findings: list[Finding]) -> list[list]:
    """A row per finding, except that a figure warning in several cells is one row: a machine that runs
    faster than the baseline's warns on every time of every cell, and one line per figure says that."""
    warned: dict[str, list[Finding]] = {}
    for f in findings:
        if f.level == "warn":
            warned.setdefault(f.figure, []).append(f)
    rows, grouped = [], set()
    for f in findings:
        group = warned.get(f.figure) if f.level == "warn" else None
        if group and len(group) > 1:
            if f.figure not in grouped:
                grouped.add(f.figure)
                ratios = [g.new / g.baseline for g in group if isinstance(g.new, (int, float))
                          and isinstance(g.baseline, (int, float)) and g.baseline]
                spread = f"×{min(ratios):.2f} to ×{max(ratios):.2f}" if ratios else ""
                rows.append(["WARN", f"{len(group)} cells", f.figure, "", "", spread, "machine-dependent: warns"])
            continue
        rows.append([f.level.upper(), f.cell, f.figure, show(f.baseline), show(f.new), show(f.delta), f.why])
    return rows


def _render_findings(verdict: Verdict, markdown: bool) -> str:
    rows = _rows(verdict.findings)
    header = ["", "cell", "figure", "baseline", "new", "delta", "rule"]
    if markdown:
        from bench.report import markdown as md
        from bench.report.table import Cell, Column, Table

        if not rows:
            return f"### Regression gate — {verdict.line()}\n\nNo change beyond tolerances.\n"
        table = Table("regress", f"Regression gate — {verdict.line()}", [Column(h, numeric=False) for h in header])
        for row in rows:
            table.add("", [Cell(str(c)) for c in row])
        return md.render(table)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines[1:] if not rows else lines) + ("\n" if rows else "") + verdict.line()


def is_fresh(record: dict | None, sha: str | None, dirty: bool | None) -> bool:
    """The record was made from a clean tree at commit `sha`, and the tree is still clean there: with
    local edits (dirty) no record can be known to come from the code that runs now."""
    e = (record or {}).get("env") or {}
    return (record is not None and sha is not None and dirty is False
            and e.get("git_sha") == sha and e.get("git_dirty") is False)


def gate(suite_name: str, baseline_path: str, results: str, tolerances: Tolerances, executor,
         update: bool = False, reuse: bool = False, quiet: bool = False) -> Verdict | None:
    """Run the suite (every cell anew, or with `reuse` only cells without a fresh record), then
    rewrite the baseline (`update`, returns None) or compare against it.

    A record is fresh (see `is_fresh`) when it is what the current code would write: a cell id says
    what was configured, not which code ran it, so older records cannot stand in for the current code.
    """
    from bench import env
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.run.runner import run_grid
    from bench.run.store import Store
    from bench.tasks.data import check_cells

    baseline = None if update else read_baseline(baseline_path)  # bad input fails before any work
    suite = load_suite(suite_name)
    cells = grid.expand(suite)
    check_cells(cells)
    store = Store(results)
    sha, dirty = env.repo_state()
    stale = [c for c in cells if not (reuse and is_fresh(store.read(c.suite, c.id), sha, dirty))]
    run_grid(stale, store, executor, force=True, quiet=quiet)
    records = [r for r in (store.read(c.suite, c.id) for c in cells) if r is not None]
    if update:
        write_baseline(baseline_path, make_baseline(suite.name, records, env.collect(probe_device=False)))
        return None
    return compare(baseline, records, tolerances)
