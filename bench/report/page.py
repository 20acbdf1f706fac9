"""index.html: one self-contained page (inline CSS, plots as data URIs, one inline script, no network).

It opens with the Explore section (bench/report/interactive.py: a sortable, filterable table of every ok
result and a Pareto plot on axes the reader picks), then holds the tables (reasons for cells that did not
end ok as footnotes and tooltips), the plots, the suite definition (its YAML file when found, and the
resolved configurations the records carry) and the environment the records were made in. Everything but
the Explore section's sorting, filtering and plot reads without JavaScript.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from html import escape

from bench.errors import BadInput
from bench.report import interactive
from bench.report.table import Cell, Table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a; margin: 0 auto;
       max-width: 1500px; padding: 1em 2em 4em; background: #fff; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #333; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; white-space: nowrap; }
thead th { border-top: 2px solid #333; border-bottom: 1px solid #333; background: #f4f4f4; text-align: left; }
tbody tr:last-child td { border-bottom: 2px solid #333; }
tr.group-start td { border-top: 1px solid #666; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td[title] { cursor: help; text-decoration: underline dotted #999; }
sup { color: #a00; }
.caption, .notes, figcaption { color: #444; font-size: 12px; }
.notes { margin-top: 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 1.5em; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.skipped { color: #7a4b00; }
""" + interactive.CSS
# What the page may load: its own inline styles, data: images and the one inline script (by its hash). The
# browser then refuses any request a later change (or a value in a record) might slip in.
CSP = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {interactive.script_hash()}; "
       "base-uri 'none'; form-action 'none'")


def cell_html(cell: Cell, table: Table, numeric: bool) -> str:
    tip = " | ".join(table.notes[n - 1] for n in cell.notes)
    attrs = f' class="{"num" if numeric else "text"}"' + (f' title="{escape(tip)}"' if tip else "")
    text = escape(cell.text)
    if cell.bold:
        text = f"<strong>{text}</strong>"
    marks = "".join(f'<sup><a href="#{table.slug}-note-{n}">{n}</a></sup>' for n in cell.notes)
    return f"<td{attrs}>{text}{marks}</td>"


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(c.header)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        start = ' class="group-start"' if table.starts_group(i) else ""
        cells = "".join(cell_html(c, table, col.numeric) for c, col in zip(row, table.columns))
        body.append(f"<tr{start}>{cells}</tr>")
    notes = "".join(f'<li id="{table.slug}-note-{i}">{escape(n)}</li>' for i, n in enumerate(table.notes, 1))
    return (f'<h3 id="{table.slug}">{escape(table.title)}</h3>\n<p class="caption">{escape(table.caption)}</p>\n'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>\n'
            + (f'<ol class="notes">{notes}</ol>\n' if notes else ""))


def plots_html(report) -> str:
    figures, skipped = [], []
    for plot in report.plots:
        if plot.skipped:
            skipped.append(f'<p class="skipped">{escape(plot.title)}: not drawn: {escape(plot.skipped)}</p>')
            continue
        data = base64.b64encode(plot.svg.read_bytes()).decode("ascii")
        figures.append(f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{escape(plot.title)}">'
                       f"<figcaption><strong>{escape(plot.title)}.</strong> {escape(plot.caption)}</figcaption></figure>")
    return f'<div class="plots">{"".join(figures)}</div>' + "".join(skipped)


def suite_html(report, suite_source: str) -> str:
    """The suite's YAML text when its file is found, and the resolved configurations from the records."""
    from bench.plan.suite import find_suite

    try:
        path = find_suite(suite_source)
        text = f"<p>Suite file <code>{escape(str(path))}</code>:</p><pre>{escape(path.read_text())}</pre>"
    except (BadInput, OSError):
        text = f"<p>The suite file for '{escape(suite_source)}' was not found; the records' configurations follow.</p>"
    configs: dict[str, list] = {}
    for record in report.frame["record"]:
        cell = record["cell"]
        config = cell.get("config") or {}
        label = cell.get("label") or cell["method"]
        for key, value in ((f"method {label}", {"method": config.get("method"), "train": config.get("train")}),
                           (f"model {cell['model']}", config.get("model")), (f"task {cell['task']}", config.get("task"))):
            configs.setdefault(key, []).append(value)
    details = []
    for key in sorted(configs):
        counts = tally(configs[key], lambda value: json.dumps(value, sort_keys=True, default=str))
        variants = "".join(f"<p>{n} record(s):</p><pre>{escape(json.dumps(json.loads(v), indent=1))}</pre>"
                           for v, n in counts.most_common())
        details.append(f"<details><summary>{escape(key)}</summary>{variants}</details>")
    return text + "<h3>Resolved configurations (from the records)</h3>" + "".join(details)


def env_html(report) -> str:
    """Each environment field with its distinct values and how many records have each."""
    fields: dict[str, list] = {}
    for record in report.frame["record"]:
        for key, value in (record.get("env") or {}).items():
            fields.setdefault(key, []).append(value)
    values = {key: tally(found, lambda v: json.dumps(v) if isinstance(v, (dict, list)) else str(v))
              for key, found in fields.items()}
    rows = "".join(f'<tr><td class="text">{escape(k)}</td><td class="text">'
                   + "<br>".join(escape(v) + (f" ({n} records)" if len(c) > 1 else "") for v, n in c.most_common())
                   + "</td></tr>" for k, c in sorted(values.items()))
    return f"<table><thead><tr><th>field</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>"


def tally(values: list, key) -> Counter:
    """How many of `values` have each `key(value)`, in order of first appearance. Records repeat a few
    distinct values thousands of times, so values are first counted by `repr` (fast, in C) and `key` (a JSON
    dump, say) runs once per distinct one; equal reprs are equal JSON values, so the counts are the same."""
    by_repr: dict[str, list] = {}
    for value in values:
        text = repr(value)
        entry = by_repr.get(text)
        if entry is None:
            by_repr[text] = [value, 1]
        else:
            entry[1] += 1
    counts: Counter = Counter()
    for value, n in by_repr.values():
        counts[key(value)] += n
    return counts


def document(report, suite_source: str) -> str:
    explore = interactive.explore_html(report)
    sections = [("explore", "Explore", explore)]
    sections += [(heading.lower().replace(" ", "-"), heading, "".join(table_html(t) for t in tables))
                 for heading, tables in report.sections()]
    sections.append(("plots", "Plots", plots_html(report)))
    if report.problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
        sections.append(("unreadable", "Records not shown", f"<ul>{items}</ul>"))
    sections += [("suite", "Suite definition", suite_html(report, suite_source)),
                 ("environment", "Environment", env_html(report))]
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{html}</section>\n' for key, title, html in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<link rel="icon" href="data:,"><title>peft-bench: {escape(report.suite)}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>peft-bench: {escape(report.suite)}</h1>\n"
            + (f"<p><em>{escape(report.description)}</em></p>\n" if report.description else "")
            + f"<p>{escape(report.summary_line())} Scores are on a 0-100 scale; hover a cell with a dotted "
            f"underline for its notes.</p>\n<nav>{nav}</nav>\n{body}</body></html>\n")
