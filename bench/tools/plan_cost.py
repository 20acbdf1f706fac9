"""What a grid will cost before it runs (`run --dry-run`): each cell's training FLOPs and time.

A cell's training FLOPs = its optimizer steps × the FLOPs of one training step, as `peft-bench
estimate` counts them for the cell's model, method settings, batch size and max_length (on the meta
device: no weights). Steps are `max_steps`, else ceil(epochs × training rows / batch size), the rows
counted from local files or synthetic tasks, or read from the hub's split sizes; a cell whose rows or
step cannot be known (hub offline, a composition, a method that needs real weights) is `unknown`,
never guessed. Time = FLOPs / a rate per cell: `--tflops`, else the median `time.train_flops_per_s` of
the suite's ok records in the store (this machine's measured rate), plus the median load and
evaluation time of those records. A grid's wall time is the cells' time over the executor's slots.
"""

from __future__ import annotations

import math
import statistics
import sys

from bench.errors import BadInput
from bench.plan.cellspec import Cell


def train_rows(cell: Cell, known: dict) -> int | None:
    """Training rows the cell trains on (shots or max_train_samples of the split), None when unknown;
    `known` keeps each task's split size, read once per plan."""
    cap = cell.train.shots or cell.train.max_train_samples
    key = ("rows", cell.task.name, cell.data_dir)
    if key not in known:
        known[key] = split_rows(cell.task, cell.data_dir)
    rows = known[key]
    if rows is None:
        return cap if cap is not None and cell.train.shots else None
    return min(rows, cap) if cap is not None else rows


def split_rows(task, data_dir) -> int | None:
    """Rows of a task's training split: counted where they are local or synthetic, the hub's stated size
    otherwise (None offline)."""
    from bench.tasks.data import hub_offline, hub_split, load_rows

    if "dataset" in task.source and "manual" not in task.source and data_dir is None:
        if hub_offline():
            return None
        try:
            from datasets import load_dataset_builder

            info = load_dataset_builder(task.source["dataset"], task.source.get("config"),
                                        revision=task.source.get("revision")).info
            return info.splits[hub_split(task, "train")].num_examples
        except Exception:  # offline, or no split sizes published
            return None
    try:
        return len(load_rows(task, "train", data_dir))
    except Exception:  # a missing file: `run` says so before any work; the plan just cannot count it
        return None


def cell_flops(cell: Cell, known: dict) -> tuple[int | None, str]:
    """(training FLOPs, how they were found or why unknown). `known` caches what cells share: one estimate
    per shape, one row count per task."""
    from bench.cell.train import total_steps

    if cell.train.max_steps is not None:
        steps = cell.train.max_steps
    else:
        rows = train_rows(cell, known)
        if rows is None:
            return None, "unknown: the training split's size (hub offline?)"
        steps = total_steps(cell.train, rows)
    key = ("step", cell.model.name, cell.method, repr(sorted(cell.method_config.items())), cell.train.batch_size,
           cell.train.max_length, cell.train.weights_dtype, cell.train.attention, cell.train.gradient_checkpointing)
    if key not in known:
        known[key] = _step_flops(cell)
    per_step, why = known[key]
    return (None, why) if per_step is None else (steps * per_step, f"{steps} steps")


def _step_flops(cell: Cell) -> tuple[int | None, str]:
    from bench.methods.base import method_settings
    from bench.tools.estimate import estimate

    try:
        result = estimate(cell.model.name, cell.method, cell.train.batch_size, cell.train.max_length,
                          dtype=cell.train.weights_dtype, settings=method_settings(cell.method_config),
                          attention=cell.train.attention, gradient_checkpointing=cell.train.gradient_checkpointing)
    except BadInput as e:
        return None, f"unknown: {e.message.splitlines()[0][:120]}"
    return result["flops"]["train_step"], ""


def measured_rate(store, suite: str) -> tuple[float | None, float, int]:
    """(median training FLOP/s, median load + evaluation seconds, records) of the suite's ok records."""
    records = [r for r in store.records(suite)[0] if r["status"] == "ok"] if store.suite_dir(suite).is_dir() else []
    rates = [r["time"].get("train_flops_per_s") for r in records]
    rates = [x for x in rates if isinstance(x, (int, float)) and x > 0]
    overheads = [(r["time"].get("load_s") or 0) + (r["time"].get("eval_s") or 0) for r in records]
    return (statistics.median(rates) if rates else None, statistics.median(overheads) if overheads else 0.0,
            len(rates))


def print_plan(cells: list[Cell], executor, tflops: float | None, store) -> None:
    """One line per cell (its training FLOPs and time), then the totals, to stdout; notes to stderr."""
    from bench.cell.recipe import quiet_libraries

    if tflops is not None and not tflops > 0:
        raise BadInput(f"--tflops must be a positive number, got {tflops}", "--tflops")
    quiet_libraries()  # the estimates build every method once: their warnings are not the plan's news
    suite = cells[0].suite if cells else None
    rate, overhead, n = (tflops * 1e12, 0.0, 0) if tflops else measured_rate(store, suite) if suite else (None, 0.0, 0)
    known: dict = {}
    total_flops, total_s, unknown = 0, 0.0, 0
    for cell in cells:
        flops, how = cell_flops(cell, known)
        if flops is None:
            unknown += 1
            print(f"{cell.line()}  train FLOPs {how}")
            continue
        seconds = flops / rate + overhead if rate else None
        total_flops += flops
        total_s += seconds or 0.0
        shown = f"  ≈ {_duration(seconds)}" if seconds is not None else ""
        print(f"{cell.line()}  train FLOPs {flops:.3g} ({how}){shown}")
    slots = getattr(executor, "slots", None)
    line = f"{len(cells)} cells, {total_flops:.3g} training FLOPs"
    line += f" ({unknown} cells unknown, not counted)" if unknown else ""
    if rate:
        source = (f"--tflops {tflops:g}" if tflops else
                  f"the median of {n} ok records of {suite} in {store.root}, plus their median load and "
                  f"evaluation time {overhead:.1f} s per cell")
        line += f"; ≈ {_duration(total_s)} of cell time at {rate / 1e12:.3g} TFLOP/s per cell ({source})"
        if slots:
            line += f", ≈ {_duration(total_s / slots)} on {slots} {'slot' if slots == 1 else 'slots at once'}"
    else:
        print("note: no rate to estimate times with: give --tflops (per cell), or run a few cells of this "
              "suite first so their records measure this machine's rate", file=sys.stderr)
    print(line)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{math.ceil(hours):,} h"
