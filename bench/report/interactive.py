"""index.html's Explore section: every ok result in one table a reader can sort and filter (by model, task,
family and method), a Pareto plot of the rows shown, on two axes the reader picks, and the training curves of
a cell the reader picks among the rows shown (bench/report/explore_curves.py).

A row is an aggregate of bench/report/aggregate.py (one per model, task, method label and shots: means over
the ok seeds), never a raw record; a cell without an ok seed is left out and named under the table. The
table is rendered here in full, so without JavaScript the page shows it as a static table. The data goes
into the page once, as a JSON blob; assets/*.js (SCRIPTS), embedded inline, sort, filter and draw from it.
Nothing is fetched when the page is viewed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from importlib.resources import files

import pandas as pd

from bench import fmt
from bench.figures import shown_in
from bench.fmt import missing
from bench.report.explore_curves import curve_blob
from bench.report.style import FAMILY_STYLE, OTHER_STYLE
from bench.report.tables import display_label, family_name, status_text

FILTERS = ("model", "task", "family", "method")  # the table's text columns a reader filters by


@dataclass(frozen=True)
class NumericColumn:
    """A numeric column of the explore table, and an axis of the Pareto plot when `axis` is set."""

    key: str  # the value's name in the JSON blob (the aggregate's column, 'score', 'seeds')
    header: str
    show: Callable[[object], str]  # the value as the table (and the plot's tooltip) writes it
    axis: str | None = None  # its name in the axis pickers; None: not plotted
    better: str | None = None  # "higher" or "lower": how the Pareto front reads this axis
    log: bool = False  # the axis starts on a log scale (counts spanning decades)
    factor: float = 1.0  # plotted value = stored value × factor (seconds -> ms)
    unit: str = ""  # the plotted unit, for tick labels: "count" gets K/M/B suffixes


def _figure_column(f, shown) -> NumericColumn:
    return NumericColumn(f.key, shown.header, lambda value: shown.text(f, value), axis=shown.axis,
                         better=shown.better, log=shown.log, factor=shown.times, unit=shown.unit)


def numeric_columns() -> list[NumericColumn]:
    """The score, then every figure the registry shows on the explore page, in the registry's order."""
    score = NumericColumn("score", "Score", fmt.score, axis="score (main metric, 0-100)", better="higher",
                          unit="points")
    return [score, *(_figure_column(f, shown) for f, shown in shown_in("explore"))]
DEFAULT_AXES = ("params.trainable", "score")  # as the static params plot: trainable params (log) vs score
TEXT_COLUMNS = [("model", "Model"), ("task", "Task"), ("family", "Family"), ("method", "Method"),
                ("metric", "Metric")]
# One inline script: the shared helpers, the curve picker (listening before the explorer announces its rows),
# the explorer.
SCRIPTS = ("plotkit.js", "curves.js", "explore.js")
SCRIPT = "\n".join(files("bench.report").joinpath("assets", name).read_text(encoding="utf-8") for name in SCRIPTS)
if "</script" in SCRIPT.lower():  # inlined verbatim, it would end its element early
    raise RuntimeError("bench/report/assets/*.js must not contain '</script'")

CSS = """
.explore-controls { display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; align-items: center; margin: 0.6em 0; }
.explore-controls label { font-size: 13px; } .explore-controls select { font: inherit; max-width: 16em; }
.explore-count { font-weight: bold; }
#explore-table td.exact[title] { text-decoration: none; cursor: default; }
.explore-scroll { max-height: 34em; overflow: auto; }
.explore-scroll thead th { position: sticky; top: 0; z-index: 1; }
#explore-table th button { font: inherit; font-weight: bold; color: inherit; background: none; border: 0;
                           padding: 0; cursor: pointer; text-align: left; }
#explore-table th .arrow { color: #aaa; margin-left: 0.3em; }
#explore-table th[aria-sort=ascending] .arrow, #explore-table th[aria-sort=descending] .arrow { color: #000; }
.explore-plot { margin-top: 1em; } .explore-plot svg { display: block; max-width: 100%; height: auto; }
.explore-plot svg text { font: 11px system-ui, sans-serif; fill: #1a1a1a; }
.explore-plot .grid { stroke: #e4e4e4; } .explore-plot .frame { fill: none; stroke: #333; }
.explore-plot .front-line { fill: none; stroke: #000; stroke-width: 1.2; stroke-dasharray: 5 3; }
.explore-plot .point path { stroke: #000; stroke-width: 0.8; }
.explore-plot .point.on-front path { stroke-width: 2; }
.explore-plot .point.on-front circle.ring { fill: none; stroke: #d00; stroke-width: 1.5; }
.explore-plot .point:hover path { stroke-width: 2.5; }
.curve-panels { display: flex; flex-wrap: wrap; gap: 0.5em 1em; }
.explore-controls #explore-curve-pick { max-width: none; }
.curve-panel text { font: 11px system-ui, sans-serif; fill: #1a1a1a; } .curve-panel .grid { stroke: #e4e4e4; }
.curve-panel .frame { fill: none; stroke: #333; }
.curve-panel .curve-line { fill: none; stroke: #1f5fa8; stroke-width: 1.5; } .curve-panel .curve-dot { fill: #1f5fa8; }
"""


def explore_rows(report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(aggregates with at least one ok seed, aggregates with none) in the tables' order."""
    agg = report.agg
    if agg.empty:
        return agg, agg
    has_ok = agg["n"] > 0
    return agg[has_ok].reset_index(drop=True), agg[~has_ok].reset_index(drop=True)


def number(value) -> float | None:
    """A JSON number, or null for a figure nobody recorded (never 0)."""
    return None if missing(value) else float(value)


def blob_row(row) -> dict:
    """One table row as the script reads it: filter keys, values to sort and plot, texts for tooltips."""
    values = {"score": number(row["score_mean"]), "seeds": int(row["n"])}
    columns = numeric_columns()
    values |= {f.key: number(row.get(f.key)) for f in columns if f.key != "score"}
    texts = {f.key: f.show(values[f.key]) for f in columns}
    texts["score"] = fmt.score(row["score_mean"], row["score_std"])
    return {"model": str(row["model"]), "task": str(row["task"]), "family": family_name(row),
            "method": display_label(row), "metric": str(row["main_metric"] or ""), "values": values,
            "texts": texts}


def peak_sources(rows: pd.DataFrame) -> set[str]:
    """What the rows' peak memory measured ('CPU RSS', 'CUDA allocated'): one name, or each row names its own."""
    return {fmt.peak_name(s) for s in rows.get("memory.peak_source", []) if not missing(s)}


def memory_axis(rows: pd.DataFrame) -> dict:
    """Peak memory in GB when some row reaches 1 GB, else MB (as the memory tables choose), with the figure's
    source named when all rows share one."""
    known = [float(v) for v in rows.get("memory.peak_bytes", []) if not missing(v)]
    unit, scale = ("GB", 2**30) if known and max(known) >= 2**30 else ("MB", 2**20)
    sources = peak_sources(rows)
    named = f", {sources.pop()}" if len(sources) == 1 else ""
    return {"label": f"peak memory ({unit}{named})", "factor": 1 / scale, "unit": unit}


def blob(rows: pd.DataFrame) -> dict:
    axes = []
    for f in numeric_columns():
        axis = {"key": f.key, "label": f.axis, "better": f.better, "log": f.log, "factor": f.factor, "unit": f.unit}
        if f.key == "memory.peak_bytes":
            axis |= memory_axis(rows)
        axes.append(axis)
    families = {name: {"marker": m, "colour": c} for name, (m, c) in FAMILY_STYLE.items()}
    return {"rows": [blob_row(r) for _, r in rows.iterrows()], "axes": axes, "default_axes": list(DEFAULT_AXES),
            "filters": list(FILTERS), "families": families,
            "other_family": {"marker": OTHER_STYLE[0], "colour": OTHER_STYLE[1]}}


def script_json(data) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' as \\u escapes, so no value (a method label
    holding '</script>' or '<!--') can end the element or change how the HTML parser reads it."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def script_hash() -> str:
    """The CSP source that lets the inline script, and nothing else, run."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii") + "'"


def table_html(rows: pd.DataFrame, data: dict) -> str:
    sources = peak_sources(rows)
    columns = numeric_columns()
    headers = {f.key: f.header for f in columns}
    if len(sources) == 1:  # else each cell names its own, in its tooltip
        headers["memory.peak_bytes"] += f" ({next(iter(sources))})"
    head = "".join(f'<th data-key="{key}" data-type="text">{header}</th>' for key, header in TEXT_COLUMNS)
    head += "".join(f'<th data-key="{key}" data-type="number">{escape(h)}</th>' for key, h in headers.items())
    head += '<th data-key="seeds" data-type="number">Seeds ok</th>'
    body = []
    for i, ((_, row), item) in enumerate(zip(rows.iterrows(), data["rows"])):
        cells = "".join(f'<td class="text">{escape(item[key])}</td>' for key, _ in TEXT_COLUMNS)
        for f in columns:
            value, text = item["values"][f.key], escape(item["texts"][f.key])
            if f.unit == "count" and not missing(value):  # the exact count, without a note's dotted underline
                cells += f'<td class="num exact" title="{value:,.0f}">{text}</td>'
            elif f.key == "memory.peak_bytes" and len(sources) > 1 and not missing(value):
                cells += f'<td class="num" title="{escape(fmt.peak_name(row.get("memory.peak_source")))}">{text}</td>'
            else:
                cells += f'<td class="num">{text}</td>'
        cells += seeds_cell(row)
        body.append(f'<tr data-row="{i}">{cells}</tr>')
    return (f'<div class="scroll explore-scroll"><table id="explore-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def seeds_cell(row) -> str:
    """'3 of 3'; '2 of 3 (failed)' with the failures' reasons as its tooltip."""
    bad = status_text(row["statuses"])
    text = f"{int(row['n'])} of {int(row['n_cells'])}" + (f" ({bad})" if bad else "")
    tip = " | ".join(row["reasons"])
    return '<td class="num"' + (f' title="{escape(tip)}"' if tip else "") + f">{escape(text)}</td>"


def left_out_html(no_ok: pd.DataFrame) -> str:
    if no_ok.empty:
        return ""
    items = ", ".join(f"{display_label(r)} · {r['model']} · {r['task']} ({status_text(r['statuses'])})"
                      for _, r in no_ok.iterrows())
    return (f'<p class="notes">Not shown: {len(no_ok)} cell(s) without an ok seed, so without a result: '
            f"{escape(items)}. The tables below give their reasons.</p>")


def explore_html(report) -> str:
    """The section's HTML: the static table (all a page without JavaScript needs), the controls and plot
    area the script fills in and reveals, the JSON blob and the script."""
    rows, no_ok = explore_rows(report)
    if rows.empty:
        return "<p>No cell has an ok seed yet: nothing to explore.</p>" + left_out_html(no_ok)
    data = blob(rows)
    data["cells"], cells_of = curve_blob(report.frame, rows, report.training_curves)
    for item, cells in zip(data["rows"], cells_of):
        item["cells"] = cells
    caption = ("One row per model, task, method and shots: means over the seeds that ended ok (Score: mean ± "
               "std of the task's main metric, 0-100). A dash is a figure no record has, never a zero.")
    hint = ("Click a header to sort (empty values stay last); the selects filter the table, the Pareto plot "
            "below it and the cells whose training curves you can pick.")
    # Elements of class needs-script stay hidden unless the script runs (and fills them in).
    return (f'<p class="caption">{escape(caption)} <span class="needs-script" hidden>{escape(hint)}</span></p>\n'
            '<div id="explore-controls" class="explore-controls needs-script" hidden></div>\n'
            f"{table_html(rows, data)}\n{left_out_html(no_ok)}"
            '<div id="explore-plot" class="explore-plot needs-script" hidden></div>\n'
            + ('<div id="explore-curves" class="explore-plot needs-script" hidden></div>\n' if data["cells"] else "")
            + f'<script type="application/json" id="explore-data">{script_json(data)}</script>\n'
            f"<script>{SCRIPT}</script>\n")
