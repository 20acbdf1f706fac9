"""The report's Reproduction section: each measured score beside what a paper published for the same model, method
and task (bench/references/), the difference, whether it is within the paper's spread, and every difference of
setting named.

A row is a (model, task, method label) of the aggregate with at least one ok seed and a published counterpart for
its registry method; one row per published counterpart (a paper may give a method twice, in two settings). A
mixture cell (bench/plan/mixtures.py) has a row per task it was scored on (`scores.<task>:<metric>`) that a
multi-task table publishes (bench/references: `multitask`), shown as "<task> (in <mixture>)".

Ours is computed as the paper computes its value: the median over our ok seeds where the paper reports a median
(the LoRA paper's median of 5), the mean where it reports a mean or a single run; the other statistic stands
beside it, and the statistics column names both (kind and number of runs), with a note where they differ.
"""

from __future__ import annotations

import pandas as pd

from bench import fmt, references
from bench.fmt import DASH, missing
from bench.report.table import Cell, Column, Table
from bench.report.tables import display_label, slug
from bench.tasks.mixture import member_key

# Where the paper prints no spread for a row, a difference within this many points counts as reproduced: the
# regression gate's default score tolerance (bench/judging.py: Tolerances.score_abs). Documented in docs/reproduce.md.
NO_SPREAD_POINTS = 1.0


def reproduction_tables(agg: pd.DataFrame) -> list[Table]:
    """One table per model that has measured cells with published counterparts."""
    if agg.empty:
        return []
    tables = []
    for model, rows in agg.groupby("model", sort=True):
        pairs = [(row, ref, key, shown) for _, row in rows.iterrows() if row["n"] > 0
                 for ref, key, shown in _counterparts(model, row)
                 if not missing(row.get(f"scores.{key}.mean"))]
        if pairs:
            tables.append(_table(model, pairs))
    return tables


def _counterparts(model: str, row: pd.Series) -> list[tuple[references.Reference, str, str]]:
    """(reference, the row's score key, the task as shown) for each published value a row compares with: a
    single-task cell's under its metric, a mixture cell's under each task it was scored on."""
    members = _members(row)
    if not members:
        return [(ref, ref.metric, row["task"]) for ref in references.matching(model, row["method"], row["task"])]
    return [(ref, member_key(task, ref.metric), f"{task} (in {row['task']})") for task in members
            for ref in references.matching(model, row["method"], task, multitask=True)]


def _members(row: pd.Series) -> list[str]:
    """The tasks a mixture cell was scored on: those of its `scores.<task>:<metric>.mean` columns with a value."""
    keys = [column[len("scores."):-len(".mean")] for column, value in row.items()
            if column.startswith("scores.") and column.endswith(".mean") and not missing(value)]
    return list(dict.fromkeys(key.partition(":")[0] for key in keys if ":" in key))


def _table(model: str, pairs: list[tuple[pd.Series, references.Reference, str, str]]) -> Table:
    columns = [Column("Task", numeric=False), Column("Method", numeric=False), Column("Metric", numeric=False),
               Column("Ours", extra=("n",)), Column("Statistic (paper / ours)", numeric=False),
               Column("Published", extra=("spread",)), Column("Δ"), Column("Within", numeric=False),
               Column("Ours, other statistic", extra=("std",)),
               Column("Method params (ours / paper)", numeric=False), Column("Source", numeric=False)]
    table = Table(f"reproduction-{slug(model)}", f"{model}: beside the published results", columns,
                  caption="Ours: over the ok seeds (n), 0-100, under this suite's recipe, computed as the paper "
                          "computes its value (the median where it reports a median, else the mean); the other "
                          "statistic beside it. Published: the paper's value ± the spread it prints. Δ = ours − "
                          "published. Within: |Δ| no larger than the spread, or than "
                          f"{NO_SPREAD_POINTS:g} point where the paper prints none. Differences of setting are in "
                          "the notes.")
    for row, ref, key, task in pairs:
        n = int(row["n"])
        mean, std = row[f"scores.{key}.mean"], row.get(f"scores.{key}.std")
        median = row.get(f"scores.{key}.median")
        by_median = ref.aggregate == "median"
        ours = float(median if by_median else mean)
        ours_name = f"{'median' if by_median else 'mean'} of {n}"
        statistic = Cell(f"{ref.statistic_name} / {ours_name}")
        if (ref.aggregate != "single" and ref.seeds and ref.seeds != n) or (ref.aggregate == "single" and n > 1):
            statistic.notes.append(table.note(f"{ref.row}: the published {ref.statistic_name}, ours the {ours_name} "
                                              "seeds: a different number of runs"))
        other = Cell(f"mean {fmt.score(mean, std)}", float(mean), extra={"std": std}) if by_median else \
            Cell(f"median {fmt.score(median)}", None if missing(median) else float(median), extra={"std": None})
        delta = ours - ref.value
        limit = ref.spread if ref.spread is not None else NO_SPREAD_POINTS
        within = Cell("yes" if abs(delta) <= limit + 1e-9 else "no")
        if ref.spread is None:
            within.notes.append(table.note(f"{ref.row}: the paper prints no spread; within {NO_SPREAD_POINTS:g} "
                                           "point counts as reproduced"))
        source = Cell(f"{ref.table}: {ref.row}")
        source.notes += [table.note(f"{ref.paper} ({_where(ref)}), {ref.split}.")]
        source.notes += [table.note(d) for d in ref.differences]
        if ref.setting:
            source.notes.append(table.note(f"{ref.row}: {ref.setting}"))
        if ref.costs:
            source.notes.append(table.note(f"{ref.row}, published costs: " + "; ".join(
                f"{name} {_number(value)} ({definition})" for name, value, definition in ref.costs)))
        params = row.get("params.method")
        matched = ref.params_match(params)
        shown_params = f"{fmt.count(params)} / {_shown_params(ref.params)}"
        if matched is False:
            shown_params += " (differs)"
        table.add(ref.table, [
            Cell(task), Cell(display_label(row)), Cell(ref.metric),
            Cell(f"{ours:.1f} (n={n})", ours, extra={"n": n}), statistic,
            Cell(f"{ref.value:.1f}" + (f" ± {ref.spread:g}" if ref.spread is not None else ""), ref.value,
                 extra={"spread": ref.spread}),
            Cell(fmt.signed(delta), delta), within, other, Cell(shown_params), source])
    return table


def _where(ref: references.Reference) -> str:
    return f"arXiv {ref.arxiv}; read from {ref.read_from}" if ref.arxiv[:1].isdigit() else f"read from {ref.read_from}"


def _number(value: float) -> str:
    """A published figure as it was read: 22,292,725,760 bytes, 942.0 s."""
    return f"{value:,.0f}" if value == int(value) and abs(value) >= 1e4 else f"{value:,}"


def _shown_params(stated: str | None) -> str:
    """The paper's count as it prints it ("0.3M"), an exact count in the report's own format."""
    if stated is None:
        return DASH
    return fmt.count(int(stated)) if stated.isdigit() else stated
