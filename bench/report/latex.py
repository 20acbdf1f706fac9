"""LaTeX: booktabs tables ready for a paper (\\usepackage{booktabs}), one file with all of them."""

from __future__ import annotations

from bench.report.table import Cell, Table

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "–": "--", "Δ": r"$\Delta$", "×": r"$\times$"}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in str(text))


def cell_text(cell: Cell) -> str:
    text = escape(cell.text)
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    if cell.notes:
        text += "$^{" + ",".join(map(str, cell.notes)) + "}$"
    return text


def render(table: Table) -> str:
    spec = "".join("r" if c.numeric else "l" for c in table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{escape(table.title)}. {escape(table.caption)}}}", rf"\label{{tab:{table.slug}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(escape(c.header) for c in table.columns) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        if table.starts_group(i):
            lines.append(r"\midrule")
        lines.append(" & ".join(cell_text(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if table.notes:
        lines.append(r"\par\smallskip\footnotesize\raggedright")
        lines += [rf"$^{{{i}}}$ {escape(note)}\\" for i, note in enumerate(table.notes, 1)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def document(report) -> str:
    header = (f"% peft-bench report for suite {report.suite}: {report.summary_line()}\n"
              "% Needs \\usepackage{booktabs} and \\usepackage{graphicx} (for \\resizebox).\n")
    return header + "\n".join(render(t) for t in report.tables())
