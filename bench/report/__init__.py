"""Reports: a suite's records -> tables (Markdown, LaTeX, CSV, HTML), plots and one index.html.

reports/<suite>/
  report.md        every table, the plots linked (Markdown)
  tables.tex       every table (LaTeX, booktabs)
  csv/<table>.csv  the numbers behind each table
  plots/*.png|svg  the plots (drawn when md or html is written: the formats that show them)
  index.html       one self-contained page: tables, plots, suite definition, environment
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.errors import BadInput

FORMATS = ("md", "tex", "csv", "html")
PLOT_FORMATS = {"md", "html"}  # the formats that show the plots


def parse_formats(value: str | list[str] | None) -> list[str]:
    """`--format md,tex` -> ['md', 'tex']; all four when not given."""
    if value is None:
        return list(FORMATS)
    items = value if isinstance(value, list) else [v.strip() for v in value.split(",") if v.strip()]
    for item in items:
        if item not in FORMATS:
            raise BadInput(f"unknown report format '{item}'", "--format", FORMATS)
    if not items:
        raise BadInput("no report format given", "--format", FORMATS)
    return list(dict.fromkeys(items))


def write_report(suite: str, results: str | Path = "results", out: str | Path = "reports",
                 formats: list[str] | None = None, suite_source: str | None = None) -> list[Path]:
    """Write the report of `suite`'s records; `suite_source` (a suite name or YAML path) finds the suite file."""
    # Imported here: pandas and matplotlib load only when a report is written, not for `peft-bench list`.
    from bench.report import csvfiles, latex, markdown, page
    from bench.report.aggregate import latest_records
    from bench.report.build import build
    from bench.store import load_frame

    formats = parse_formats(formats)
    frame, problems = load_frame(results, suite)
    frame, superseded = latest_records(frame)
    problems = problems + superseded
    if frame.empty:
        raise BadInput(f"no records for suite '{suite}' in {Path(results) / suite}; run it first "
                       f"(peft-bench run --suite {suite})", "--suite")
    folder = Path(out) / suite
    for owned, wanted in (("plots", PLOT_FORMATS), ("csv", {"csv"})):
        if wanted & set(formats):  # rewritten whole: no file of a model or table that is gone stays behind
            shutil.rmtree(folder / owned, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    report = build(suite, frame, problems, folder, plots=bool(PLOT_FORMATS & set(formats)))
    written = [p for plot in report.plots for p in (plot.png, plot.svg) if p is not None]
    if "md" in formats:
        written.append(_write(folder / "report.md", markdown.document(report)))
    if "tex" in formats:
        written.append(_write(folder / "tables.tex", latex.document(report)))
    if "csv" in formats:
        written += [_write(folder / "csv" / f"{t.slug}.csv", csvfiles.render(t)) for t in report.tables()]
    if "html" in formats:
        written.append(_write(folder / "index.html", page.document(report, suite_source or suite)))
    return written


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
