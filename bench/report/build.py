"""A suite's report before it is written: its records, tables and plots, shared by every format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.fmt import DASH, missing
from bench.report.aggregate import aggregate, method_summary
from bench.report.crosslingual import transfer_plots, transfer_tables
from bench.report.curves import curve_plots, curve_tables
from bench.report.multitask import multitask_tables
from bench.report.plots import Plot, draw_all
from bench.report.reproduction import reproduction_tables
from bench.report.sweeps import select, selection_tables, sensitivity_plots
from bench.report.table import Cell, Column, Table
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
    curves: list[Table] = field(default_factory=list)  # how fast each method learns (bench/report/curves.py)
    crosslingual: list[Table] = field(default_factory=list)  # by train and test language (report/crosslingual.py)
    multitask: list[Table] = field(default_factory=list)  # mixtures beside per-task training (report/multitask.py)
    training_curves: dict[str, dict] = field(default_factory=dict)  # by cell id: bench/cell/curves.read_curve
    plots: list[Plot] = field(default_factory=list)
    description: str | None = None  # the suite file's `description`: what the suite is and is not, said first

    def summary_line(self) -> str:
        counts = self.frame["status"].value_counts()
        by_status = ", ".join(f"{int(n)} {status}" for status, n in counts.items())
        return (f"{len(self.frame)} records ({by_status}) of {self.frame['model'].nunique()} model(s), "
                f"{self.frame['task'].nunique()} task(s), {self.frame['label'].nunique()} method(s).")

    def sections(self) -> list[tuple[str, list[Table]]]:
        out = [("Methods compared", self.survey)]
        if self.crosslingual:
            out.append(("Cross-lingual transfer", self.crosslingual))
        if self.selection:
            out.append(("Selected settings and stages", self.selection))
        if self.reproduction:
            out.append(("Reproduction", self.reproduction))
        if self.multitask:
            out.append(("Multi-task", self.multitask))
        out.append(("Memory", self.memory))
        if self.curves:
            out.append(("Training curves", self.curves))
        if self.inference:
            out.append(("Inference speed", self.inference))
        if self.fewshot is not None:
            out.append(("Few-shot", self.fewshot_scores + [self.fewshot]))
        return out

    def tables(self) -> list[Table]:
        return [t for _, tables in self.sections() for t in tables]


def stage_tables(stages: pd.DataFrame) -> list[Table]:
    """The pre-training stages the cells started from (bench/plan/stages.py): scored on nothing, so in no ranking."""
    if stages.empty:
        return []
    table = Table("stages", "Pre-training stages", [
        Column("Stage", numeric=False), Column("Model", numeric=False), Column("Method", numeric=False),
        Column("Mixture", numeric=False), Column("Steps"), Column("Final loss"), Column("Train time (s)"),
        Column("Status", numeric=False)],
        caption="Each stage trained once per model; the cells that name it in `init_from` start from its saved state.")
    for _, row in stages.iterrows():
        cell, train = row["record"]["cell"], row["record"].get("train") or {}
        mixture = ", ".join(cell["config"]["task"]["source"]["mixture"])
        table.add(cell["stage"], [Cell(cell["stage"]), Cell(row["model"]), Cell(row["method"]), Cell(mixture),
                                  _number(train.get("steps"), "{:d}"), _number(train.get("final_loss"), "{:.4f}"),
                                  _number(row.get("time.train_s"), "{:.1f}"), Cell(row["status"])])
    return [table]


def _number(value, form: str) -> Cell:
    return Cell(DASH) if missing(value) else Cell(form.format(value), value=value)


def build(suite: str, frame: pd.DataFrame, problems: list[str], folder: Path, plots: bool,
          task_order: list[str] | None = None, description: str | None = None,
          curves: dict[str, dict] | None = None) -> Report:
    """`frame`: every record; a sweep's settings not chosen on the selection split leave it here (sweeps.select)
    and appear only in the Selected settings section. `curves`: the cells' training curves by id."""
    is_stage = frame["record"].map(lambda r: bool(r["cell"].get("stage"))).astype(bool)
    stages, frame = frame[is_stage], frame[~is_stage]
    frame, swept, choices = select(frame)
    agg = aggregate(frame, task_order)
    summary = method_summary(agg)
    devices = sorted({r["env"].get("device") or "?" for r in frame["record"] if r["status"] == "ok"})
    report = Report(suite, folder, frame, agg, survey_tables(agg, summary), memory_tables(agg),
                    fewshot_table(summary), fewshot_score_tables(summary), inference_tables(summary, devices),
                    problems, reproduction_tables(agg), selection_tables(swept, choices) + stage_tables(stages),
                    description=description)
    report.curves = curve_tables(frame, curves or {})
    report.crosslingual = transfer_tables(frame)
    report.multitask = multitask_tables(frame)
    report.training_curves = curves or {}
    if plots:
        report.plots = draw_all(agg, summary, folder / "plots", sensitivity_plots(swept, choices, folder / "plots")
                                + curve_plots(frame, curves or {}, folder / "plots")
                                + transfer_plots(frame, folder / "plots"))
    return report
