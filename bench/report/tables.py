"""The report's tables, built from aggregate.py's rows: survey comparison, memory, few-shot cost.

A cell that did not end ok shows its status (failed, oom, timeout, unsupported) with the reason in a
footnote; it never enters a mean. A figure nobody recorded shows a dash, never a zero.
"""

from __future__ import annotations

import pandas as pd

from bench import fmt, methods
from bench.figures import FIGURES, shown_in
from bench.fmt import DASH, missing
from bench.report.table import Cell, Column, Table

REASON_CHARS = 300  # footnotes quote an error message up to this length


def memory_parts() -> list[tuple[str, str]]:
    """The memory breakdown's columns, (figure, header), as the figure registry shows them ("memory"). Beside
    them, the memory tables show the rate the same cell's training ran at (the registry's "speed")."""
    return [(f.key, shown.header) for f, shown in shown_in("memory")]


def family_name(row) -> str:
    """A row's method family; a record may leave it null (NaN in a frame), which shows as unknown."""
    family = row["method_family"]
    return family if isinstance(family, str) else DASH


def display_label(row) -> str:
    """A method's row name: its suite label, with the shots of a few-shot cell whose method sees them (zero-shot
    shares its grid's `shots` setting but sees no example: no shots in its name)."""
    declared = methods.declared(row["method"])
    sees_examples = declared is None or declared.trains or declared.in_context
    return row["label"] if missing(row["shots"]) or not sees_examples else f"{row['label']} ({int(row['shots'])}-shot)"


def status_text(statuses: dict) -> str:
    """'failed ×2, oom' for cells that did not end ok; '' when all did."""
    return ", ".join(f"{s} ×{n}" if n > 1 else s for s, n in sorted(statuses.items()))


def reference_row(summary: pd.DataFrame, row) -> pd.Series | None:
    """The reference row (full fine-tuning) other rows of the same model (and shots) are compared with."""
    same = summary[(summary["model"] == row["model"]) & summary["reference"]]
    same = same[same["shots"].isna()] if missing(row["shots"]) else same[same["shots"] == row["shots"]]
    return same.iloc[0] if len(same) else None


def score_cell(table: Table, task_row, where: str, metric: str | None = None) -> Cell:
    """'mean ± std (n=k)' of the main score (or of `metric`), plus the statuses of the seeds that did not end
    ok, with their reasons."""
    if task_row is None:
        return Cell(DASH, notes=[table.note(f"{where}: no record yet (not run, or not in the grid)")])
    bad = status_text(task_row["statuses"])
    notes = [table.note(f"{where}: {reason[:REASON_CHARS]}") for reason in task_row["reasons"]]
    if bad and not task_row["reasons"]:
        notes.append(table.note(f"{where}: {bad} (no reason recorded)"))
    mean, std = ((task_row["score_mean"], task_row["score_std"]) if metric is None else
                 (task_row.get(f"scores.{metric}.mean"), task_row.get(f"scores.{metric}.std")))
    extra = {"std": std, "n": task_row["n"], "status": bad or "ok"}
    if not task_row["n"]:
        return Cell(bad, None, extra, notes)
    text = fmt.score(mean, std, task_row["n"]) if not missing(mean) else DASH
    return Cell(f"{text} [{bad}]" if bad else text, mean, extra, notes)


def further_evaluations(agg: pd.DataFrame, task: str, main_metric: str | None) -> list[str]:
    """The metrics of a task's further evaluations of the same trained model, `<main>_<split>` (MNLI's
    accuracy_mismatched, MMLU's accuracy_5shot), that some record of the task has."""
    if not main_metric:
        return []
    rows = agg[agg["task"] == task]
    prefix = f"scores.{main_metric}_"
    return sorted(c[len("scores."):-len(".mean")] for c in agg.columns
                  if c.startswith(prefix) and c.endswith(".mean") and rows[c].notna().any())


def figure_cell(row, key: str) -> Cell:
    """A registered figure written as its registry entry says, with its value (CSV, best marks)."""
    value = row.get(key)
    return Cell(FIGURES[key].show(value), value)


def time_cell(table: Table, row, name: str) -> Cell:
    """The train time, marked where it was measured beside other cells (`shared`)."""
    return shared(table, row, name, figure_cell(row, "time.train_s"))


def shared(table: Table, row, name: str, cell: Cell) -> Cell:
    """A timing `cell` of `row`, with a note when some of its records ran beside other cells on their device
    (packed on a GPU, or CPU jobs at once): such a timing is slower than alone, and comparable only with timings
    measured alike."""
    beside = row.get("cells_beside")
    if not missing(beside) and beside > 0 and not missing(cell.value):
        cell.text += " (shared)"
        cell.notes.append(table.note(f"{name}: trained beside up to {int(beside)} other cell(s) on the same device "
                                     "(env.cells_beside), so its timings are not timings alone"))
    return cell


def peak_header(rows: pd.DataFrame, unit: str, name: str = "Peak memory") -> tuple[str, bool]:
    """The peak-memory header naming its figure, and whether cells must name theirs (mixed sources)."""
    sources = set(rows["memory.peak_source"].dropna())
    if len(sources) == 1:
        return f"{name} ({unit}, {fmt.peak_name(sources.pop())})", False
    return f"{name} ({unit})", True


def in_bytes(header: str, unit: str) -> str:
    """The CSV header of a size column shown in `unit`: CSV holds the bytes."""
    return header.replace(f"({unit}", "(bytes", 1)


def peak_cell(row, scale: float, name_source: bool) -> Cell:
    value = row["memory.peak_bytes"]
    text = fmt.in_unit(value, scale)
    if name_source and not missing(value):
        text += f" ({fmt.peak_name(row['memory.peak_source'])})"
    return Cell(text, value)


def survey_tables(agg: pd.DataFrame, summary: pd.DataFrame) -> list[Table]:
    """One table per model: a row per method (by family), a column per task's main metric, then costs."""
    tables = []
    for model, rows in summary.groupby("model", sort=True):
        tasks = agg[agg["model"] == model].drop_duplicates("task")[["task", "main_metric"]]
        peak, name_source = peak_header(rows, "GB")
        references = {i: reference_row(summary, r) for i, r in rows.iterrows()}
        with_delta = any(ref is not None for ref in references.values())  # a full FT row
        further = {t: further_evaluations(agg, t, m) for t, m in tasks.values}
        columns = [Column("Family", numeric=False), Column("Method", numeric=False)]
        for t, m in tasks.values:
            columns += [Column(f"{t} ({metric or 'score'})", "higher", ("std", "n", "status"))
                        for metric in [m, *further[t]]]
        columns += [Column("Average", "higher")] + ([Column("Δ avg vs full")] if with_delta else [])
        columns += [Column("Method params", "lower"), Column("Method %", "lower"),
                    Column("Stored", "lower", csv_header="Stored (bytes)"),
                    Column(peak, "lower", csv_header=in_bytes(peak, "GB")), Column("Train time (s)", "lower")]
        table = Table(f"survey-{slug(model)}", f"{model}: methods compared", columns,
                      caption="Scores: mean ± std over seeds (n = ok seeds), 0-100. Average: mean of the "
                              "task means. Costs: the largest over tasks (params, stored, memory); train "
                              "time is the mean over tasks." + head_caption(rows) + checkpointing_caption(agg, model)
                              + (" Columns such as accuracy_5shot are further evaluations of the same model "
                                 "(MMLU 5-shot, MNLI mismatched); the Average leaves them out."
                                 if any(further.values()) else ""))
        for i, row in rows.iterrows():
            name = display_label(row)
            method = Cell(name)
            if row["missing_tasks"] and len(row["missing_tasks"]) < len(tasks):
                method.notes.append(table.note(f"{name}: no ok score on {', '.join(row['missing_tasks'])}; "
                                               "no average, and its costs cover the other tasks only"))
            cells = [Cell(family_name(row)), method]
            for t in tasks["task"]:
                cells += [score_cell(table, row["tasks"].get(t), f"{name} on {t}", metric)
                          for metric in [None, *further[t]]]
            cells += [Cell(fmt.score(row["score_avg"]), row["score_avg"])]
            cells += [delta_cell(row, references[i])] if with_delta else []
            cells += [figure_cell(row, "params.method"), figure_cell(row, "params.method_pct"),
                      figure_cell(row, "params.stored_bytes"), peak_cell(row, 2**30, name_source),
                      time_cell(table, row, name)]
            table.add(family_name(row), cells)
        table.mark_best()
        tables.append(table)
    return tables


def checkpointing_caption(agg: pd.DataFrame, model: str) -> str:
    """Which methods trained with gradient checkpointing: their memory is lower and their time higher for it,
    which a fair reading of the table must know."""
    column = "train.gradient_checkpointing"
    if column not in agg:
        return ""
    on = sorted(set(agg[(agg["model"] == model) & (agg[column] == True)]["label"]))  # noqa: E712 (null is not off)
    return (f" Gradient checkpointing (activations recomputed in backward: less memory, more time) was on for: "
            f"{', '.join(on)}." if on else "")


def head_caption(rows: pd.DataFrame) -> str:
    """The note on what the method columns leave out: the task head every trained method trains."""
    heads = {int(t - m) for t, m in zip(rows.get("params.trainable", []), rows.get("params.method", []))
             if not missing(t) and not missing(m) and t > m}
    text = (" Method params: what the method trains outside the task head (params.method), as papers count "
            "a method; %: of the pretrained model without its head.")
    if heads:
        text += f" The task head ({' or '.join(fmt.count(h) for h in sorted(heads))} parameters) trains too."
    return text


def delta_cell(row, ref) -> Cell:
    """The row's average minus its reference row's (full fine-tuning), in score points."""
    if ref is None or missing(ref["score_avg"]):
        return Cell(DASH)
    if ref["label"] == row["label"]:
        return Cell("ref.")
    delta = None if missing(row["score_avg"]) else row["score_avg"] - ref["score_avg"]
    return Cell(fmt.signed(delta), delta)


def memory_rows(agg: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, shots): the task whose measured peak is largest (its breakdown is shown)."""
    ok = agg[agg["n"] > 0].copy()
    if ok.empty:
        return ok
    ok["_peak"] = pd.to_numeric(ok["memory.peak_bytes"], errors="coerce").fillna(-1)
    ok = ok.sort_values("_peak", ascending=False, kind="stable")
    keep = ok.drop_duplicates(["model", "label", "shots"]).drop(columns="_peak")
    return keep.sort_values(["model", "family_order", "label"], kind="stable").reset_index(drop=True)


def memory_unit(rows: pd.DataFrame, parts: list[tuple[str, str]]) -> tuple[str, float]:
    """GB when any shown part or measured peak reaches 1 GB, else MB: one unit per table or plot."""
    known = [float(v) for c in [c for c, _ in parts] + ["memory.peak_bytes"] for v in rows[c] if not missing(v)]
    return ("GB", 2**30) if known and max(known) >= 2**30 else ("MB", 2**20)


def part_absent(rows: pd.DataFrame, column: str) -> bool:
    return column not in rows or not rows[column].notna().any()


def memory_tables(agg: pd.DataFrame) -> list[Table]:
    """One table per model: the memory breakdown next to the predicted and the measured peak."""
    tables = []
    for model, rows in memory_rows(agg).groupby("model", sort=True):
        every = memory_parts()
        parts = [(col, name) for col, name in every if not part_absent(rows, col)]
        absent = [name.lower() for col, name in every if (col, name) not in parts]
        unit, scale = memory_unit(rows, parts)
        peak, name_source = peak_header(rows, unit, "Measured peak")
        columns = [Column("Family", numeric=False), Column("Method", numeric=False),
                   Column("Task (largest peak)", numeric=False)]
        columns += [Column(f"{name} ({unit})", csv_header=f"{name} (bytes)") for _, name in parts]
        columns += [Column(peak, csv_header=in_bytes(peak, unit))]
        speed = [(f, shown) for f, shown in shown_in("speed") if not part_absent(rows, f.key)]
        columns += [Column(shown.header, "higher", csv_header=shown.csv_header) for _, shown in speed]
        caption = ("Per method, the cell (task) with the largest measured peak; figures are means over ok seeds. "
                   "Definitions: docs/measurement.md." + checkpointing_caption(agg, model))
        absent += [shown.header.split(" (")[0] for f, shown in shown_in("speed") if part_absent(rows, f.key)]
        if absent:
            reason = " (MFU needs a CUDA device with a datasheet peak: bench/cell/measure.py)" \
                if "MFU" in absent else ""
            caption += f" Not recorded: {', '.join(absent)}{reason}."
        table = Table(f"memory-{slug(model)}", f"{model}: memory", columns, caption=caption)
        for _, row in rows.iterrows():
            cells = [Cell(family_name(row)), Cell(display_label(row)), Cell(row["task"])]
            cells += [Cell(fmt.in_unit(row[col], scale), row[col]) for col, _ in parts]
            cells.append(peak_cell(row, scale, name_source))
            where = f"{display_label(row)} on {row['task']}"
            cells += [shared(table, row, where, Cell(shown.text(f, row[f.key]), row[f.key])) for f, shown in speed]
            table.add(family_name(row), cells)
        tables.append(table)
    return tables


def inference_tables(summary: pd.DataFrame, devices: list[str]) -> list[Table]:
    """One table per model: how fast each trained method predicts, unmerged and (where it can) merged, beside
    the FLOPs one prediction counts: the inference overhead of additive methods, measured."""
    tables = []
    for model, rows in summary.groupby("model", sort=True):
        parts = [(f, shown) for f, shown in shown_in("inference") if not part_absent(rows, f.key)]
        if not parts:
            continue
        columns = [Column("Family", numeric=False), Column("Method", numeric=False)]
        columns += [Column(shown.header, shown.better, csv_header=shown.csv_header) for _, shown in parts]
        columns += [Column("Inference FLOPs per example", "lower")]
        table = Table(f"inference-{slug(model)}", f"{model}: inference speed", columns,
                      caption=f"Measured on {', '.join(devices) or 'an unrecorded device'}; means over tasks and "
                              "seeds. Latency: the median time to predict one example alone; examples/s: in batches "
                              "of the suite's eval_batch_size. Merged: the method's update folded into the weights "
                              "(mergeable methods). Definitions: docs/measurement.md.")
        for _, row in rows.sort_values(["family_order", "label"], kind="stable").iterrows():
            cells = [Cell(family_name(row)), Cell(display_label(row))]
            cells += [Cell(shown.text(f, row.get(f.key)), row.get(f.key)) for f, shown in parts]
            cells.append(figure_cell(row, "flops.inference_per_example"))
            table.add(family_name(row), cells)
        table.mark_best()
        tables.append(table)
    return tables


def flops_column(rows: pd.DataFrame, measured: str, cost_model: str) -> tuple[str, str]:
    """(column, how it was obtained): the measured figure when any row has it, else the cost model's."""
    if measured in rows and rows[measured].notna().any():
        return measured, "measured"
    return cost_model, "cost model"


def fewshot_score_tables(summary: pd.DataFrame) -> list[Table]:
    """Few-shot scores per task, one table per model: median over seeds with the interquartile range
    (T-Few's summary; each seed's score is itself the median over the task's templates)."""
    rows = summary[summary["shots"].notna()] if "shots" in summary else summary.iloc[0:0]
    tables = []
    for model, per_model in rows.groupby("model", sort=True):
        tasks = sorted({task for by_task in per_model["tasks"] for task in by_task})
        table = Table(f"few-shot-scores-{slug(model)}", f"Few-shot scores on {model}",
                      [Column("Family", numeric=False), Column("Method", numeric=False)]
                      + [Column(t, "higher", ("iqr", "n", "status")) for t in tasks],
                      caption="Median over seeds (interquartile range, seeds); a seed's score is the median over "
                              "the task's templates.")
        for _, method in per_model.iterrows():  # method_summary's order: family, label, shots
            cells = [Cell(family_name(method)), Cell(display_label(method))]
            for task in tasks:
                r = method["tasks"].get(task)
                cell = score_cell(table, r, f"{display_label(method)} on {task}")
                if r is not None and r["n"]:
                    cell.text = fmt.median_iqr(r["score_median"], r["score_iqr"], r["n"])
                    cell.value = r["score_median"]
                    cell.extra = {**cell.extra, "iqr": r["score_iqr"]}
                cells.append(cell)
            table.add(family_name(method), cells)
        table.mark_best()
        tables.append(table)
    return tables


def fewshot_table(summary: pd.DataFrame) -> Table | None:
    """T-Few's Table 1: inference FLOPs per example, training FLOPs, disk space and accuracy per method."""
    rows = summary[summary["shots"].notna()] if "shots" in summary else summary.iloc[0:0]
    if rows.empty:
        return None
    infer, infer_how = flops_column(rows, "flops.inference_per_example", "flops.cost_model_inference_per_example")
    train, train_how = flops_column(rows, "flops.train_total", "flops.cost_model_train_total")
    metrics = {r["main_metric"] for _, row in rows.iterrows() for r in row["tasks"].values() if r["main_metric"]}
    score_name = "Accuracy" if metrics == {"accuracy"} else "Score"
    columns = [Column("Family", numeric=False), Column("Method", numeric=False), Column("Model", numeric=False),
               Column("Shots"), Column(f"Inference FLOPs per example ({infer_how})", "lower"),
               Column(f"Training FLOPs ({train_how})", "lower"),
               Column("Disk space", "lower", csv_header="Disk space (bytes)"),
               Column(f"{score_name} (mean over tasks)", "higher")]
    table = Table("few-shot", "Few-shot: cost and accuracy", columns,
                  caption="The structure of T-Few's Table 1. Shots: the examples a method uses (0 for zero-shot). "
                          "FLOPs are means over tasks; disk space is the stored state (largest over tasks); the "
                          "score is the mean over tasks of the median over seeds, as in the few-shot score table.")
    for _, row in rows.sort_values(["family_order", "label", "model", "shots"], kind="stable").iterrows():
        name = display_label(row)
        score = Cell(fmt.score(row["score_median_avg"]), row["score_median_avg"])
        shots = int(row["shots"]) if row["uses_examples"] else 0
        if row["missing_tasks"]:
            score.notes.append(table.note(f"{name} on {row['model']}: no ok score on "
                                          f"{', '.join(row['missing_tasks'])}, so no mean over tasks"))
        table.add(family_name(row), [
            Cell(family_name(row)), Cell(row["label"]), Cell(row["model"]),
            Cell(str(shots), float(shots)),
            figure_cell(row, infer), figure_cell(row, train), figure_cell(row, "params.stored_bytes"), score])
    table.mark_best()
    return table


def slug(name: str) -> str:
    """A file-name-safe form of a model or task name (hub ids contain '/')."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name)).strip("-") or "x"
