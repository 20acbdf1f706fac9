"""A suite's report before it is written: its records, tables and plots, shared by every format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.report.aggregate import aggregate, method_summary
from bench.report.plots import Plot, draw_all
from bench.report.reproduction import reproduction_tables
from bench.report.sweeps import select, selection_tables, sensitivity_plots
from bench.report.table import Table
from bench.report.tables import fewshot_score_tables, fewshot_table, inference_tables, memory_tables, survey_tables


@dataclass
class Report:
    suite: str
    folder: Path  # reports/<suite>: plots and files are written below it
    frame: pd.DataFrame  # one row per record (store.load_frame)
    agg: pd.DataFrame  # one row per (model, task, method label, shots): aggregate.aggregate
    survey: list[Table]
    memory: list[Table]
    fewshot: Table | None
    fewshot_scores: list[Table]
    inference: list[Table]
    problems: list[str]  # files of the suite that are not usable records
    reproduction: list[Table] = field(default_factory=list)  # beside published results (bench/references/)
    selection: list[Table] = field(default_factory=list)  # sweeps: the settings chosen, and all tried
    plots: list[Plot] = field(default_factory=list)
    description: str | None = None  # the suite file's `description`: what the suite is and is not, said first

    def summary_line(self) -> str:
        counts = self.frame["status"].value_counts()
        by_status = ", ".join(f"{int(n)} {status}" for status, n in counts.items())
        return (f"{len(self.frame)} records ({by_status}) of {self.frame['model'].nunique()} model(s), "
                f"{self.frame['task'].nunique()} task(s), {self.frame['label'].nunique()} method(s).")

    def sections(self) -> list[tuple[str, list[Table]]]:
        out = [("Methods compared", self.survey)]
        if self.selection:
            out.append(("Selected settings", self.selection))
        if self.reproduction:
            out.append(("Reproduction", self.reproduction))
        out.append(("Memory", self.memory))
        if self.inference:
            out.append(("Inference speed", self.inference))
        if self.fewshot is not None:
            out.append(("Few-shot", self.fewshot_scores + [self.fewshot]))
        return out

    def tables(self) -> list[Table]:
        return [t for _, tables in self.sections() for t in tables]


def build(suite: str, frame: pd.DataFrame, problems: list[str], folder: Path, plots: bool,
          task_order: list[str] | None = None, description: str | None = None) -> Report:
    """`frame`: every record; a sweep's settings not chosen on the selection split leave it here (sweeps.select)
    and appear only in the Selected settings section."""
    frame, swept, choices = select(frame)
    agg = aggregate(frame, task_order)
    summary = method_summary(agg)
    devices = sorted({r["env"].get("device") or "?" for r in frame["record"] if r["status"] == "ok"})
    report = Report(suite, folder, frame, agg, survey_tables(agg, summary), memory_tables(agg),
                    fewshot_table(summary), fewshot_score_tables(summary), inference_tables(summary, devices),
                    problems, reproduction_tables(agg), selection_tables(swept, choices), description=description)
    if plots:
        report.plots = draw_all(agg, summary, folder / "plots", sensitivity_plots(swept, choices, folder / "plots"))
    return report
