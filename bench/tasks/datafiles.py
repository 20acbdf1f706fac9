"""One data file: its format by suffix, its rows, and the checks of those rows against the task that reads them.

JSON lines, CSV, TSV and plain-text tables (tab-separated), and parquet, any but parquet gzip'd. Tables are read with
a task source's table options (`delimiter`, `header`, `columns`, `quoting`). The checks before work
(bench/tasks/data.py's check_cells) read a file's first rows, or every row where labels are checked, and name the
file, its line where there is one, the task definition's file:line and the columns the file has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.errors import BadInput
from bench.tasks.spec import TaskSpec

# Every table a task's `files` may name: suffix -> the reader and its default delimiter.
FORMATS = {".jsonl": "json", ".json": "json", ".csv": ",", ".tsv": "\t", ".txt": "\t", ".parquet": "parquet"}
QUOTING = {"minimal": 0, "all": 1, "nonnumeric": 2, "none": 3}  # csv.QUOTE_* by name
HEAD_ROWS = 100  # rows read from each file by the checks before work


def file_format(path: str | Path) -> str | None:
    """The reader of a data file by its suffix (a `.gz` after it is allowed), None when unsupported."""
    suffixes = Path(path).suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # parquet compresses inside the file
    return FORMATS.get(suffixes[-1]) if suffixes else None


def read_file(path: Path, options: dict | None = None, limit: int | None = None) -> list[dict]:
    """The rows of a data file (the first `limit` only, when given); `options` are a task source's
    table options. Malformed content is BadInput naming the file (and the line, for JSON lines)."""
    options = options or {}
    kind = file_format(path)
    if kind == "json":
        return _read_json_lines(path, limit)
    import pandas as pd

    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
            frame = frame.head(limit) if limit else frame
        else:
            header = options.get("header", True)
            frame = pd.read_csv(path, sep=options.get("delimiter", kind), header=0 if header else None,
                                names=None if header else options.get("columns"), nrows=limit,
                                quoting=QUOTING[options.get("quoting", "minimal")], keep_default_na=False,
                                compression="infer")
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as e:  # decoding, gzip, truncation
        raise BadInput(f"cannot read this {kind if kind == 'parquet' else 'table'}: {e}", str(path)) from None
    return frame.to_dict("records")


def _check_field_counts(path: Path, options: dict, limit: int | None) -> None:
    """A table row with fewer fields than the columns, which pandas fills with empty text: BadInput at its line."""
    import csv
    import gzip

    header = options.get("header", True)
    expected = None if header else len(options.get("columns") or [])
    opened = gzip.open(path, "rt", encoding="utf-8", newline="") if path.suffix == ".gz" else \
        path.open(encoding="utf-8", newline="")
    with opened as f:
        reader = csv.reader(f, delimiter=options.get("delimiter", file_format(path)),
                            quoting=QUOTING[options.get("quoting", "minimal")])
        for i, fields in enumerate(reader):
            if limit is not None and i > limit:
                return
            if expected is None:
                expected = len(fields)
            elif fields and len(fields) < expected:
                raise BadInput(f"a row with {len(fields)} field(s) where the table has {expected} columns",
                               f"{path}:{reader.line_num}")


def _read_json_lines(path: Path, limit: int | None) -> list[dict]:
    import gzip

    rows, number = [], 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            for number, raw in enumerate(f, 1):  # decoded line by line, so a bad byte is named with its line
                if limit is not None and len(rows) >= limit:
                    break
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError as e:  # name the user's file and line, not the parser's column in it
                    raise BadInput(f"not a JSON object per line: {e.msg} at column {e.colno}",
                                   f"{path}:{number}") from None
                except RecursionError:
                    raise BadInput("not a JSON object per line: nested too deep", f"{path}:{number}") from None
                if not isinstance(rows[-1], dict):
                    raise BadInput(f"not a JSON object per line: {type(rows[-1]).__name__}", f"{path}:{number}")
    except UnicodeDecodeError as e:
        raise BadInput(f"not UTF-8 text ({e.reason}): save the file as UTF-8", f"{path}:{number}") from None
    except (OSError, EOFError) as e:  # a .gz that is not gzip, or one cut short
        raise BadInput(f"cannot read this file: {e or type(e).__name__}", str(path)) from None
    return rows


def check_rows(task: TaskSpec, rows: list[dict], path: Path, header_lines: int = 0) -> None:
    """A file's rows (all, or its first) against what the task reads: non-empty, its columns present and filled,
    its label values among the class indices or names. BadInput names the file (and line: `header_lines` before
    the first row), the task and the columns."""
    where = f"{path} (task '{task.name}' defined at {task.origin})"
    if not rows:
        raise BadInput("the file has no rows", where)
    columns = list(rows[0])
    needed = [*task.text, task.label, task.target, task.group_by, (task.demonstrations or {}).get("per")]
    missing = sorted({c.split(".")[0] for c in needed if c} - set(columns))
    if missing:
        raise BadInput(f"no column {', '.join(map(repr, missing))}; the file's columns are "
                       f"{', '.join(map(repr, columns))}", where)
    top = sorted({c.split(".")[0] for c in needed if c})
    for i, row in enumerate(rows):  # a JSON null, or a NaN a table reader made of a missing value
        empty = [c for c in top if row.get(c) is None or (isinstance(row[c], float) and math.isnan(row[c]))]
        if empty:
            raise BadInput(f"row {i + 1} has no value in column {', '.join(map(repr, empty))} "
                           f"(task '{task.name}' defined at {task.origin})", f"{path}:{i + 1 + header_lines}")
    if task.type == "classification" and task.label and task.labels:
        names, n = set(task.labels), len(task.labels)
        bad = sorted({repr(v) for row in rows for v in [task.value(row, task.label)]
                      if str(v) not in names and not _class_index(v, n)})
        if bad:
            raise BadInput(f"label values {', '.join(bad[:5])} are neither class indices 0..{n - 1} nor among "
                           f"the task's labels {list(task.labels)}", where)


def rows_to_check(task: TaskSpec) -> int | None:
    """Rows the checks before work read: every row where labels are checked (a bad label on row 5,000 would
    otherwise fail inside the cell), the first HEAD_ROWS elsewhere."""
    return None if task.type == "classification" and task.label and task.labels else HEAD_ROWS


def check_file(task: TaskSpec, path: Path, options: dict, rows: list[dict]) -> None:
    """The checks before work of one data file read as `rows`: a table's field counts (which its reader cannot
    tell: it fills a short row with empty text), then check_rows, lines counted past a table's header."""
    table = file_format(path) not in ("json", "parquet")
    if table:
        _check_field_counts(path, options, rows_to_check(task))
    check_rows(task, rows, path, 1 if table and options.get("header", True) else 0)


def _class_index(value, n: int) -> bool:
    try:
        index = int(value)
    except (TypeError, ValueError):
        return False
    return str(index) == str(value).strip() and 0 <= index < n
