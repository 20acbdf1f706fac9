"""A report table independent of its format: what each cell shows, the number behind it, its notes.

Builders (tables.py) fill a Table; renderers (formats.py) write it as Markdown, LaTeX, CSV or HTML,
so every format shows the same numbers, the same bold cells and the same footnotes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.fmt import DASH, missing


@dataclass
class Cell:
    text: str = DASH
    value: float | None = None  # the number behind the text: CSV writes it, best-of-column compares it
    extra: dict = field(default_factory=dict)  # more CSV fields of this column, e.g. {"std": .., "n": ..}
    notes: list[int] = field(default_factory=list)  # footnote numbers (1-based)
    bold: bool = False


@dataclass
class Column:
    header: str
    better: str | None = None  # "higher" or "lower": which end of the column is bold; None: no bold
    extra: tuple[str, ...] = ()  # names of the Cell.extra fields CSV writes after the value
    numeric: bool = True  # False: a text column (method, family), CSV writes the text
    csv_header: str | None = None  # the CSV header when its raw value has another unit than the display (bytes)


@dataclass
class Table:
    slug: str  # file-name stem for CSV
    title: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # one group name per row (the method family)
    notes: list[str] = field(default_factory=list)  # footnote texts; Cell.notes index them from 1
    caption: str = ""

    def note(self, text: str) -> int:
        """The footnote number of `text`, adding it once however many cells cite it."""
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1

    def add(self, group: str, cells: list[Cell]) -> None:
        assert len(cells) == len(self.columns), (len(cells), [c.header for c in self.columns])
        self.rows.append(cells)
        self.groups.append(group)

    def starts_group(self, i: int) -> bool:
        """Row `i` begins a new family (a rule above it in LaTeX and HTML)."""
        return i > 0 and self.groups[i] != self.groups[i - 1]

    def mark_best(self) -> None:
        """Bold the best value of every column that has a direction, and every value shown the same
        (0.431 and 0.434 GB both read 0.43: bolding one of them would rank noise)."""
        for j, column in enumerate(self.columns):
            cells = [row[j] for row in self.rows if not missing(row[j].value)]
            if column.better is None or not cells:
                continue
            pick = max if column.better == "higher" else min
            best = pick(cells, key=lambda c: c.value)
            for cell in cells:
                cell.bold = cell.value == best.value or shown_number(cell) == shown_number(best)


def shown_number(cell: Cell) -> str:
    """The number as a cell shows it: its text up to the first space ('71.0 ± 1.4 (n=2)' -> '71.0')."""
    return cell.text.split(" ")[0]
