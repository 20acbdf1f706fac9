"""CSV: one file per table with the numbers behind the cells (full precision), for spreadsheets."""

from __future__ import annotations

import csv
import io

from bench.fmt import missing, spreadsheet_safe
from bench.report.table import Table


def render(table: Table) -> str:
    """A column's value, then its extra fields (std, n, status); text columns as shown; notes last.
    Sizes are bytes, whatever unit the display tables use, and the headers say so."""
    header = []
    for column in table.columns:
        name = column.csv_header or column.header  # CSV holds raw values: its header names their unit
        header.append(spreadsheet_safe(name))
        header += [spreadsheet_safe(f"{name} {extra}") for extra in column.extra]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header + ["notes"])
    for row in table.rows:
        line = []
        for column, cell in zip(table.columns, row):
            line.append(_value(cell.value) if column.numeric else spreadsheet_safe(cell.text))
            line += [_value(cell.extra.get(name)) for name in column.extra]
        notes = sorted({n for cell in row for n in cell.notes})
        writer.writerow(line + [spreadsheet_safe("; ".join(table.notes[n - 1] for n in notes))])
    return out.getvalue()


def _value(value) -> str:
    """Numbers as Python writes them (no rounding); unknown as an empty field."""
    if missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
