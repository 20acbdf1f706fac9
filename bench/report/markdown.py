"""Markdown: tables pasteable into a README or a pull request, and the report.md document."""

from __future__ import annotations

import html

from bench.report.table import Cell, Table


def text(value: str) -> str:
    """Text from records (labels, task and model names, notes) as Markdown shows it literally: no raw HTML, no
    table cell ended by a pipe."""
    return html.escape(str(value), quote=False).replace("|", "\\|")


def cell_text(cell: Cell) -> str:
    shown = text(cell.text)
    if cell.bold:
        shown = f"**{shown}**"
    return shown + "".join(f" [{n}]" for n in cell.notes)


def render(table: Table, level: str = "###") -> str:
    lines = [f"{level} {text(table.title)}", ""]
    if table.caption:
        lines += [text(table.caption), ""]
    lines += ["| " + " | ".join(text(c.header) for c in table.columns) + " |",
              "|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|"]
    lines += ["| " + " | ".join(cell_text(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines += [""] + [f"[{i}] {text(note)}  " for i, note in enumerate(table.notes, 1)]
    return "\n".join(lines) + "\n"


def document(report) -> str:
    """report.md: the tables, then the plots (linked), the skipped plots and unreadable records."""
    description = [f"> {text(report.description)}\n"] if report.description else []
    parts = [f"# {report.suite}\n", *description,
             report.summary_line() + "\n",
             "Scores are on a 0-100 scale. Each figure is defined in docs/reports.md and docs/measurement.md.\n"]
    for heading, tables in report.sections():
        parts.append(f"## {heading}\n")
        parts += [render(t) for t in tables]
    if report.plots:
        parts.append("## Plots\n")
        for plot in report.plots:
            if plot.skipped:
                parts.append(f"- {text(plot.title)}: not drawn: {text(plot.skipped)}\n")
            else:
                parts.append(f"### {text(plot.title)}\n\n{text(plot.caption)}\n\n"
                             f"![{text(plot.title)}]({plot.png.relative_to(report.folder)})\n")
    if report.problems:
        parts.append("## Records not shown\n\n" + "\n".join(f"- {text(p)}" for p in report.problems) + "\n")
    return "\n".join(parts) + "\n"
