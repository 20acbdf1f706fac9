"""Reports: a suite's records -> tables (Markdown, LaTeX, CSV, HTML), plots and one index.html.

reports/<suite>/
  report.md        every table, the plots linked (Markdown)
  tables.tex       every table (LaTeX, booktabs)
  csv/<table>.csv  the numbers behind each table
  plots/*.png|svg  the plots (drawn when md or html is written: the formats that show them)
  index.html       one self-contained page: the Explore table and Pareto plot (sort, filter, pick the
                   axes), tables, plots, suite definition, environment
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.errors import BadInput
from bench.files import atomic_write, checked
from bench.run.store import unusable_note

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
                 formats: list[str] | None = None,
                 suite_source: str | None = None) -> tuple[list[Path], list[str], list[str]]:
    """Write the report of `suite`'s records; `suite_source` (a suite name or YAML path) finds the suite file.
    Returns the files written, a line per file of the suite that is not a usable record (the store is read
    once, for both), and a line per symbolic link removed from the report folder."""
    # Imported here: pandas and matplotlib load only when a report is written, not for `peft-bench list`.
    from bench.report import csvfiles, latex, markdown, page
    from bench.report.aggregate import latest_records
    from bench.report.build import build
    from bench.run.store import load_curves, load_frame

    formats = parse_formats(formats)
    frame, unusable = load_frame(results, suite)
    frame, superseded = latest_records(frame)
    problems = unusable + superseded
    if frame.empty and problems:
        raise BadInput(f"no usable records for suite '{suite}' in {Path(results) / suite}: {unusable_note(problems)}",
                       "--suite")
    if frame.empty:
        raise BadInput(f"no records for suite '{suite}' in {Path(results) / suite}; run it first "
                       f"(peft-bench run --suite {suite})", "--suite")
    folder = Path(out) / checked(suite, "suite name")
    if folder.is_symlink():
        raise BadInput(f"{folder} is a symbolic link: a report is never written through one (remove it, or "
                       "give another --out)", "--out")
    folder.mkdir(parents=True, exist_ok=True)
    notes = _remove_links(folder)
    report = build(suite, frame, problems, folder, plots=bool(PLOT_FORMATS & set(formats)),
                   curves=load_curves(results, suite, frame["id"]), **suite_context(suite_source or suite))
    written = [p for plot in report.plots for p in (plot.png, plot.svg) if p is not None]
    if "md" in formats:
        written.append(_write(folder / "report.md", markdown.document(report)))
    if "tex" in formats:
        written.append(_write(folder / "tables.tex", latex.document(report)))
    if "csv" in formats:
        written += [_write(folder / "csv" / f"{t.slug}.csv", csvfiles.render(t)) for t in report.tables()]
    if "html" in formats:
        written.append(_write(folder / "index.html", page.document(report, suite_source or suite)))
    _forget_stale(folder, written, formats)
    return written, unusable, notes


MANIFEST = ".peft-bench-files.json"  # the files the last report wrote here: the only ones it may remove


def _kind(relative: str) -> set[str]:
    """The formats whose writing rewrites this generated file."""
    if relative.startswith("plots/"):
        return PLOT_FORMATS
    return {"csv/": {"csv"}, "report.md": {"md"}, "tables.tex": {"tex"}, "index.html": {"html"}}.get(
        "csv/" if relative.startswith("csv/") else relative, set())


def _forget_stale(folder: Path, written: list[Path], formats: list[str]) -> None:
    """Remove the files an earlier report wrote that this one, writing the same formats, did not (a model
    or a table that is gone); never a file the tool did not write. Then record what is there now."""
    manifest = folder / MANIFEST
    try:
        previous = json.loads(manifest.read_text())
        previous = {p for p in previous if isinstance(p, str)} if isinstance(previous, list) else set()
    except (OSError, ValueError):
        previous = set()
    now = {str(p.relative_to(folder)) for p in written}
    stale = {p for p in previous - now if _kind(p) & set(formats)}
    for relative in stale:
        path = (folder / relative).resolve()
        if path.is_relative_to(folder.resolve()) and path.is_file():
            path.unlink()
    atomic_write(manifest, (json.dumps(sorted((previous - stale) | now), indent=0) + "\n").encode())


def suite_context(name_or_path: str) -> dict:
    """What the report takes from the suite file, read once: `task_order`, the task names in the order it lists
    them (tables follow it), and `description`, one paragraph (the report's first line); [] and None without
    the file."""
    from bench.plan.suite import raw_suite

    raw = raw_suite(name_or_path)
    tasks = raw.get("tasks")
    entries = tasks if isinstance(tasks, list) else []
    text = raw.get("description")
    return {"task_order": [t if isinstance(t, str) else t.get("name") for t in entries if isinstance(t, (str, dict))],
            "description": " ".join(text.split()) if isinstance(text, str) and text.strip() else None}


def _write(path: Path, text: str) -> Path:
    atomic_write(path, text.encode("utf-8"))  # a rename: it replaces a link planted at the path, never its target
    return path


def _remove_links(folder: Path) -> list[str]:
    """Remove every symbolic link inside the report's folder (links only, never what they point to), so that no
    file of the report is written through one; a line for each."""
    removed = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            path.unlink()
            removed.append(f"{path}: a symbolic link in the report folder, removed (its target left as it was)")
    return removed
