"""Reports: records of a suite -> tables (and, with the reports issue, plots and HTML)."""

from __future__ import annotations

from pathlib import Path

from bench.errors import BadInput
from bench.report.aggregate import aggregate
from bench.report.markdown import task_tables
from bench.store import load_frame


def write_report(suite: str, results: str | Path = "results", out: str | Path = "reports") -> list[Path]:
    frame, problems = load_frame(results, suite)
    if frame.empty:
        raise BadInput(f"no records for suite '{suite}' in {Path(results) / suite}; run it first "
                       f"(peft-bench run --suite {suite})", "--suite")
    agg = aggregate(frame)
    folder = Path(out) / suite
    folder.mkdir(parents=True, exist_ok=True)
    body = [f"# {suite}\n", f"{len(frame)} records, {int((frame['status'] == 'ok').sum())} ok.\n",
            "Scores are on a 0-100 scale; mean ± sample std over seeds (n shown when > 1).\n",
            task_tables(agg)]
    if problems:
        body.append("## Unreadable records\n\n" + "\n".join(f"- {p}" for p in problems) + "\n")
    path = folder / "report.md"
    path.write_text("\n".join(body))
    return [path]
