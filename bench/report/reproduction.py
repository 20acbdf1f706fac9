"""The report's Reproduction section: each measured score beside what a paper published for the same model, method
and task (bench/references/), the difference, whether it is within the paper's spread, and every difference of
setting named.

A row is a (model, task, method label) of the aggregate with at least one ok seed and a published counterpart for
its registry method; one row per published counterpart (a paper may give a method twice, in two settings).
"""

from __future__ import annotations

import pandas as pd

from bench import fmt, references
from bench.fmt import DASH, missing
from bench.report.table import Cell, Column, Table
from bench.report.tables import display_label, slug

# Where the paper prints no spread for a row, a difference within this many points counts as reproduced: the
# regression gate's default score tolerance (bench/figures.py: Tolerances.score_abs). Documented in docs/reports.md.
NO_SPREAD_POINTS = 1.0


def reproduction_tables(agg: pd.DataFrame) -> list[Table]:
    """One table per model that has measured cells with published counterparts."""
    if agg.empty:
        return []
    tables = []
    for model, rows in agg.groupby("model", sort=True):
        pairs = [(row, ref) for _, row in rows.iterrows() if row["n"] > 0
                 for ref in references.matching(model, row["method"], row["task"])
                 if not missing(row.get(f"scores.{ref.metric}.mean"))]
        if pairs:
            tables.append(_table(model, pairs))
    return tables


def _table(model: str, pairs: list[tuple[pd.Series, references.Reference]]) -> Table:
    columns = [Column("Task", numeric=False), Column("Method", numeric=False), Column("Metric", numeric=False),
               Column("Ours", extra=("std", "n")), Column("Published", extra=("spread",)), Column("Δ"),
               Column("Within", numeric=False), Column("Method params (ours / paper)", numeric=False),
               Column("Source", numeric=False)]
    statistics = sorted({ref.statistic for _, ref in pairs})
    table = Table(f"reproduction-{slug(model)}", f"{model}: beside the published results", columns,
                  caption="Ours: mean ± std over the ok seeds (n), 0-100, under this suite's recipe. Published: "
                          f"the paper's value ± the spread it prints ({'; '.join(statistics)}). Δ = ours − "
                          "published. Within: |Δ| no larger than the spread, or than "
                          f"{NO_SPREAD_POINTS:g} point where the paper prints none. Differences of setting are in "
                          "the notes.")
    for row, ref in pairs:
        ours = float(row[f"scores.{ref.metric}.mean"])
        std = row.get(f"scores.{ref.metric}.std")
        delta = ours - ref.value
        limit = ref.spread if ref.spread is not None else NO_SPREAD_POINTS
        within = Cell("yes" if abs(delta) <= limit + 1e-9 else "no")
        if ref.spread is None:
            within.notes.append(table.note(f"{ref.row}: the paper prints no spread; within {NO_SPREAD_POINTS:g} "
                                           "point counts as reproduced"))
        source = Cell(f"{ref.table}: {ref.row}")
        source.notes += [table.note(f"{ref.paper} (arXiv {ref.arxiv}), {ref.split}.")]
        source.notes += [table.note(d) for d in ref.differences]
        if ref.setting:
            source.notes.append(table.note(f"{ref.row}: {ref.setting}"))
        params = row.get("params.method")
        matched = ref.params_match(params)
        shown_params = f"{fmt.count(params)} / {ref.params or DASH}"
        if matched is False:
            shown_params += " (differs)"
        table.add(ref.table, [
            Cell(row["task"]), Cell(display_label(row)), Cell(ref.metric),
            Cell(fmt.score(ours, std, int(row["n"])), ours, extra={"std": std, "n": int(row["n"])}),
            Cell(f"{ref.value:.1f}" + (f" ± {ref.spread:g}" if ref.spread is not None else ""), ref.value,
                 extra={"spread": ref.spread}),
            Cell(fmt.signed(delta), delta), within, Cell(shown_params), source])
    return table
