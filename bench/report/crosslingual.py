"""The report's cross-lingual section: for each model and cross-lingual task (bench/tasks/crosslingual.py), every
method's score by train language (rows: the task and its `@language` variants) and test language (columns), the
mean over its ok seeds, beside the transfer mean (`<metric>_transfer`); and a heatmap of it per method.

A record's training language and languages are read from its task's configuration, its scores from its record:
the main metric for the training language, `<metric>_<language>` for each other (crosslingual.per_language). A
failed cell is in no cell's mean; a language no ok record scored is a dash (hatched in the heatmap).

Beside the scores, what a row's cells keep to be scored in every language, the mean over its ok seeds: each cell's
stored state (`params.stored`, `stored_bytes`) plus the states of other cells it reads (`params.composed`,
`composed_bytes`: MAD-X's target languages' adapters, which it swaps in); unknown (a dash) where a cell that reads
language stages has no composed size (a record from before it was recorded), or any is unknown.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from bench.fmt import DASH, count, mean_of_all, missing, size
from bench.report.plots import Plot, floats, to_draw
from bench.report.table import Cell, Column, Table
from bench.report.tables import slug
from bench.tasks import crosslingual


def _groups(frame: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(model, task) -> {"languages", "metric", "rows": {(label, train language): [ok records' scores]}}."""
    out: dict[tuple[str, str], dict] = {}
    for _, row in frame.iterrows():
        record = row["record"]
        # a record whose configuration does not say its task's source (hand-made, or older) is in no language table
        source = ((record["cell"].get("config") or {}).get("task") or {}).get("source") or {}
        if not source.get("languages"):
            continue
        group = out.setdefault((row["model"], crosslingual.base_name(row["task"])),
                               {"languages": list(source["languages"]), "metric": record["scores"]["main_metric"],
                                "rows": {}})
        scores = group["rows"].setdefault((row["label"], source.get("train_language", "en")), [])
        if record["status"] == "ok":
            scores.append({**crosslingual.per_language(source, record["scores"]["metrics"], group["metric"]),
                           crosslingual.TRANSFER: record["scores"]["metrics"].get(
                               f"{group['metric']}_{crosslingual.TRANSFER}"),
                           **{key: _kept(record, key) for key in KEPT}})
    return out


KEPT = ("stored", "stored_bytes")  # a run's storage, beside its per-language scores


def _kept(record: dict, key: str) -> float | None:
    """What one cell keeps to be scored in every language (`key`: elements, or bytes): its stored state, plus the
    language stages' states it reads (params.composed / composed_bytes); None where one is unknown."""
    params = record.get("params") or {}
    reads = bool((record["cell"].get("config") or {}).get("language_stages"))
    parts = [params.get(key), params.get(key.replace("stored", "composed")) if reads else 0]
    return None if None in parts else sum(parts)


def _order(languages: list[str], language: str) -> int:
    return languages.index(language) if language in languages else len(languages)


def _mean(values: list) -> float | None:
    known = [v for v in values if not missing(v)]
    return statistics.fmean(known) if known else None


def _cell(value: float | None) -> Cell:
    return Cell(DASH) if value is None else Cell(f"{value:.1f}", value=value)


def transfer_tables(frame: pd.DataFrame) -> list[Table]:
    tables = []
    for (model, task), group in sorted(_groups(frame).items()):
        metric, languages = group["metric"], group["languages"]
        table = Table(f"crosslingual-{slug(model)}-{slug(task)}", f"{model} on {task}: {metric} by test language",
                      [Column("Method", numeric=False), Column("Train", numeric=False)]
                      + [Column(lang) for lang in languages] + [Column("Transfer"),
                                                                 Column("Stored params", better="lower"),
                                                                 Column("Stored", better="lower",
                                                                        csv_header="Stored (bytes)")],
                      caption="Each row: trained in one language, scored in every one (mean over ok seeds); "
                              "Transfer: the mean over the languages it was not trained in; Stored: what a cell "
                              "keeps to be scored in every language (its state, plus the language adapters it "
                              "swaps in).")
        for (label, train), runs in sorted(group["rows"].items(),
                                           key=lambda kv: (kv[0][0], _order(languages, kv[0][1]))):
            means = [_mean([r[lang] for r in runs]) for lang in languages]
            stored, stored_bytes = (mean_of_all(r[key] for r in runs) for key in KEPT)
            table.add(label, [Cell(label), Cell(train), *map(_cell, means),
                              _cell(_mean([r[crosslingual.TRANSFER] for r in runs])),
                              Cell(count(stored), value=stored), Cell(size(stored_bytes), value=stored_bytes)])
        tables.append(table)
    return tables


def transfer_plots(frame: pd.DataFrame, folder: Path) -> list[Plot]:
    """Per model, task and method: the train × test language heatmap of the table's means."""
    plots = []
    for (model, task), group in sorted(_groups(frame).items()):
        languages = group["languages"]
        for label in sorted({label for label, _ in group["rows"]}):
            trains = [lang for lang in languages if (label, lang) in group["rows"]]
            title = f"{model}, {task}, {label}: {group['metric']} by train and test language"
            grid = [[_mean([r[test] for r in group["rows"][(label, train)]]) for test in languages]
                    for train in trains]
            if all(v is None for row in grid for v in row):
                plots.append(Plot("crosslingual", title, skipped="no ok record of this method"))
                continue
            text = [[DASH if v is None else f"{v:.1f}" for v in row] for row in grid]
            numbers = [floats(float("nan") if v is None else v for v in row) for row in grid]
            caption = ("Each cell: the mean score over ok seeds of the method trained in the row's language, scored "
                       "in the column's; outlined: in-language; hatched: not known.")
            plots.append(to_draw(Plot("crosslingual", title, caption), folder,
                                 f"crosslingual-{slug(model)}-{slug(task)}-{slug(label)}", "language_heatmap",
                                 title, languages, trains, numbers, text, group["metric"]))
    return plots
