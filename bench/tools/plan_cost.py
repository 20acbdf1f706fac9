"""What a grid will cost before it runs (`run --dry-run`): each cell's training and evaluation FLOPs and time.

A cell's training FLOPs = its optimizer steps × the FLOPs of one training step, as `peft-bench estimate`
counts them for the cell's model, method settings, batch size and max_length (on the meta device: no weights;
its FLOPs-only pass, bench.tools.estimate.step_flops), once per distinct shape, plus the passes a method that
chooses its trained entries from data makes before training (fishmask, child-tuning: `flops.selection`). Steps
are `max_steps`, else ceil(epochs × training rows / batch size), the rows counted from local files or synthetic
tasks, or read from the hub's split sizes; a method that trains nothing (zero-shot, in-context learning) costs 0
training FLOPs, whatever its task; a cell whose rows or step cannot be known (hub offline, a composition, a method
that cannot be built on the meta device) is `unknown`, never guessed. Time = FLOPs / a rate per cell: `--tflops`,
else the median `time.train_flops_per_s` of the suite's ok records in the store (this machine's measured rate), plus
the median load and evaluation time of those records. A grid's wall time is the cells' time over the
executor's slots.

Evaluation FLOPs (eval_flops): every evaluation split's rows (their sizes counted, stated in the task's
`split_rows`, or the hub's), each priced as forward passes of one max_length sequence: one for a classifier, one
per answer option for rank classification, the prompt plus its decoding steps for generation. At max_length it is
an upper bound. A few-shot cell (one with `shots`) is priced, training and evaluation, at its task's measured
prompt length instead (bench/tools/prompt_lengths.py: the templates filled with the task's rows, with the cell's
tokenizer; (shots + 1) examples for in-context learning), where its rows are on this machine. A cell whose objective is
T-Few's (`objective: tfew`) is priced as the step it runs: an options batch of batch_size examples, each with its
task's answer options (bench/tools/priced_task.py options_batch), a few-shot one's prompts and options at their
lengths measured apart (prompt_lengths.priced_length: an encoder-decoder's decoder rows at the options', not the
prompt's); its shape (shape_of) names the objective and the options' length, so it never shares an LM cell's price.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys

from bench.errors import BadInput
from bench.fmt import counted
from bench.plan.cellspec import Cell
from bench.tools import plan_entries
from bench.tools.plan_rows import known_rows, train_rows
from bench.tools.prompt_lengths import at_priced_length, plan_cache_key, priced_length


def cell_flops(cell: Cell, known: dict) -> tuple[int | None, str]:
    """(training FLOPs, how they were found or why unknown). `known` caches what cells share: one price
    per shape (price_shapes fills them in at once), one row count per task."""
    if not trains(cell):
        return 0, "trains nothing"
    steps = cell_steps(cell, known)
    if steps is None:
        return None, "unknown: the training split's size (hub offline?)"
    priced = at_priced_length(cell, known)
    if shape_of(priced) not in known:
        price_shapes([priced], known, workers=1)
    per_step, _, selection, why = known[shape_of(priced)]
    if per_step is None:
        return None, why
    return steps * per_step + selection, f"{steps} steps" + (f" + {selection:.3g} selecting" if selection else "")


def eval_flops(cell: Cell, known: dict, model_of: Cell | None = None) -> tuple[int | None, str]:
    """(evaluation FLOPs, how they were found or why unknown): the forward passes of every evaluation split's rows
    (capped at max_eval_samples), each priced as a forward of one max_length sequence through the adapted model
    (the pretrained one for a method that trains nothing), a few-shot cell's at its priced length
    (at_priced_length). A row is
    one pass for a classifier, one per answer option for rank classification (on an encoder-decoder, whose forward
    is priced as max_length tokens through each of encoder and decoder, half a pass for the encoder once and half
    per option through the decoder), and for generation its prompt plus max_new_tokens decoding steps, each a
    max_length forward's per-position share. A multi-task cell's members are each priced so, through the mixture's
    model (`model_of`: its heads, its router)."""
    from bench.archs import ARCHS
    from bench.errors import Unsupported
    from bench.models import head_for
    from bench.tasks.data import eval_splits

    task = cell.task.evaluation
    if task.members and not task.source.get("scored"):
        return 0, "a pre-training stage: scored on nothing"
    if task.members:  # a multi-task cell: each task's evaluation, as its own cell's
        parts = [eval_flops(dataclasses.replace(cell, task=member), known, cell) for member in task.members]
        unknown = [why for flops, why in parts if flops is None]
        return (None, unknown[0]) if unknown else (sum(f for f, _ in parts), " + ".join(why for _, why in parts))
    rows = 0
    for split in eval_splits(task).values():
        found = known_rows(task, split, cell.data_dir, known)
        if found is None:
            return None, "unknown: the evaluation split's size (hub offline?)"
        rows += min(found, cell.train.max_eval_samples or found)
    try:
        head = head_for(ARCHS[cell.model.arch].kind, task.type)
    except Unsupported as e:
        return None, f"unknown: {e}"
    priced = pricing_cell(at_priced_length(cell, known))
    if model_of is not None:
        priced = dataclasses.replace(priced, task=model_of.task)
    if head == "classifier":
        passes, what = 1.0, "1 pass"
    elif task.type == "generation":
        passes = 1 + task.generation["max_new_tokens"] / priced.train.max_length
        what = f"prompt + {task.generation['max_new_tokens']} tokens"
    else:
        # the template's answers, else the label names (TaskSpec.answers: what rank classification scores)
        options = len((task.prompts[0].answers if task.prompts else None) or task.labels or ()) or 1
        passes, what = float(options), f"{options} options"
        if ARCHS[cell.model.arch].kind == "encoder-decoder" and not encodes_in_forward(cell.method, cell.method_config):
            # the encoder once, the decoder per option
            passes, what = 0.5 + 0.5 * options, f"the encoder once + {options} options' decoder"
    if shape_of(priced) not in known:
        price_shapes([priced], known, workers=1)
    _, forward, _, why = known[shape_of(priced)]
    return (None, why) if forward is None else (round(rows * passes * forward), f"{rows} rows × {what}")


def encodes_in_forward(method: str, config: dict) -> bool:
    """Whether a method (or a part of a composition: its resolved config's parts) keeps an encoder-decoder from
    encoding each prompt once."""
    from bench import methods
    from bench.methods.compose import is_composition

    names = [part["name"] for part in config["parts"]] if is_composition(method) else [method]
    return any(name in methods.REGISTRY and methods.get(name).encodes_in_forward for name in names)


def pricing_cell(cell: Cell) -> Cell:
    """The cell whose model is priced for the cell's evaluation: the cell itself, or for a method that trains
    nothing (zero-shot, in-context learning: the pretrained model as it is), the cell as zero-shot."""
    return cell if trains(cell) else dataclasses.replace(cell, method="zero-shot", method_config={})


def trains(cell: Cell) -> bool:
    """Whether the cell's method trains (zero-shot and in-context learning are evaluated as applied)."""
    from bench import methods

    declared = methods.declared(cell.method)
    return declared is None or declared.trains


def cell_steps(cell: Cell, known: dict) -> int | None:
    """The cell's optimizer steps: max_steps, else from its training rows (None when they cannot be known)."""
    if cell.train.max_steps is not None:
        return cell.train.max_steps
    rows = train_rows(cell, known)
    return None if rows is None else cell.train.steps_for(rows)


def shape_of(cell: Cell) -> tuple:
    """What a training step's FLOPs depend on: cells of one shape are priced once. A T-Few-objective cell's options
    step (its answer options, their priced length and the terms' settings, priced_task.cell_objective) is part of it,
    so it is never served an LM-loss cell's price, nor one of options priced at another length."""
    from bench.tools.priced_task import cell_objective, task_key

    return ("step", cell.model.name, cell.method, repr(sorted(cell.method_config.items())), cell.train.batch_size,
            cell.train.max_length, cell.train.weights_dtype, cell.train.attention, cell.train.gradient_checkpointing,
            task_key(cell.task, cell.model.kind), cell.train.pooling, cell_objective(cell))


def _cache_key(cell: Cell, what: str = "step and selection flops") -> dict | None:
    """The disk cache's key of what is known of the cell's shape (plan_cache_key: with the packages that build and
    count the step, those the method, or a composition's parts, declare among them: bitsandbytes, whose 4-bit layer
    QLoRA's estimate twins)."""
    from bench import methods

    declared = methods.for_cell(cell.method).packages  # a composition's: its parts'
    return plan_cache_key(cell.model.name, ("torch", "transformers", "peft", *declared), what=what,
                          shape=repr(shape_of(cell)))


def eval_shape(cell: Cell) -> tuple:
    """What the evaluation's predicted peak depends on beyond the training step's shape (bench/cell/eval_probe.py:
    its batch size, how it predicts, its answer options, generation's max_new_tokens and num_beams), read without
    torch: part of the memory's cache key."""
    task = cell.task.evaluation
    generation = tuple(sorted(task.generation.items())) if task.type == "generation" else ()
    return (cell.train.eval_batch_size, task.type, tuple(p.answers for p in task.prompts), tuple(task.labels or ()),
            generation)


def price_shapes(cells: list[Cell], known: dict, workers: int) -> None:
    """known[shape] = (FLOPs of one training step, of one sequence's forward pass, of the selection before training
    (each None when unknown), why unknown) for every shape among the cells: from
    the disk cache where it priced the shape before, else counted (_step_flops), on up to `workers` processes
    forked from this one once the libraries are imported (each shape's passes are independent, and this
    process never touches CUDA: the passes run on fake tensors), and then cached."""
    from bench.tasks import cache

    pending: dict[tuple, tuple[Cell, dict | None]] = {}  # shape -> a cell of it, its cache key
    for cell in cells:
        shape = shape_of(cell)
        if shape in known or shape in pending:
            continue
        key = _cache_key(cell)
        found, value = cache.lookup(key, "plan", plan_entries.step_price) if key is not None else (False, None)
        if found:
            known[shape] = tuple(value)
        else:
            pending[shape] = (cell, key)
    if not pending:
        return
    from bench.tools.estimate import prepare_to_count

    cells_of_shapes = [cell for cell, _ in pending.values()]
    prepare_to_count({cell.model.arch for cell in cells_of_shapes})
    workers = min(workers, len(pending)) if not _cuda_initialised() else 1
    prices = _priced_on_workers(cells_of_shapes, workers) if workers > 1 else \
        [_step_flops(cell) for cell in cells_of_shapes]
    for (shape, (_, key)), price in zip(pending.items(), prices):
        known[shape] = price
        if key is not None:
            cache.store(key, list(price), "plan")


def pricing_workers() -> int:
    """Processes that price a plan's shapes at once: the cores this process may use (one where processes cannot
    be forked, or the cores cannot be read)."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods() or not hasattr(os, "sched_getaffinity"):
        return 1
    return len(os.sched_getaffinity(0))


def _cuda_initialised() -> bool:
    """Whether this process has initialised CUDA (bitsandbytes asks for the device when QLoRA is in a plan on a
    GPU machine): a process that has must not fork workers, so its shapes are priced here."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def _priced_on_workers(cells: list[Cell], workers: int) -> list[tuple[int | None, int | None, int | None, str]]:
    """_step_flops of each cell on `workers` forked processes. The workers end on their own once the work is done,
    never by a signal (multiprocessing.Pool's terminate could leave one waiting for ever on a lock that a sibling
    it killed held); a worker that dies breaks the pool, and the shapes are then priced here instead."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_worker_start)
    try:
        return list(pool.map(_step_flops, cells))
    except BrokenProcessPool:
        return [_step_flops(cell) for cell in cells]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after Ctrl-C: the shapes being priced finish, no more


def _worker_start() -> None:
    import signal

    import torch

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the runner's handler (an interrupt) is not a worker's
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the planning process's to handle: it stops the pool
    torch.set_num_threads(1)  # a worker's fake passes run no kernels worth threads, and the workers share the cores


def _step_flops(cell: Cell) -> tuple[int | None, int | None, int | None, str]:
    from bench.methods.base import method_settings
    from bench.tools.estimate import step_flops
    from bench.tools.priced_task import cell_objective

    try:
        flops = step_flops(cell.model.name, cell.method, cell.train.batch_size, cell.train.max_length,
                           dtype=cell.train.weights_dtype, settings=method_settings(cell.method_config),
                           attention=cell.train.attention, gradient_checkpointing=cell.train.gradient_checkpointing,
                           task=cell.task, pooling=cell.train.pooling, objective=cell_objective(cell))
        return flops["train_step"], flops["forward_per_example"], flops["selection"], ""
    except BadInput as e:
        return None, None, None, f"unknown: {e.message.splitlines()[0][:120]}"


def predicted_memory(cell: Cell, shards: int = 1, step_device: str = "cuda") -> dict | None:
    """The memory section `estimate` predicts for the cell (weights, gradients, optimizer state, the training
    step's peak, the evaluation batch's, `predicted_peak_bytes`: docs/measurement.md) as a GPU runs it
    (`step_device` "cpu": as a CPU does), in the cell's precision (bench/tools/cuda_step.py), None when it cannot be
    predicted; from the disk cache where this shape, optimizer and evaluation (eval_shape) were predicted before. What
    a scheduler is asked for (--executor slurm) and what packing budgets (bench/run/packing.py).
    `shards` > 1: one device's, the cell sharded over that many (estimate --shards, bench/tools/sharding.py)."""
    from bench.tasks import cache

    key = _cache_key(cell, f"memory with {cell.train.optimizer}" + (f" over {shards} shards" if shards > 1 else "")
                     + (f", {cell.train.kernels} kernels" if cell.train.kernels != "torch" else "")
                     + f", precision {cell.train.precision} on {step_device}, evaluation {eval_shape(cell)!r}")
    found, value = cache.lookup(key, "plan", plan_entries.memory) if key is not None else (False, None)
    if found:
        return value
    from bench.methods.base import method_settings
    from bench.models import quiet_libraries
    from bench.tools.estimate import estimate  # torch: only to predict, never to read the cache
    from bench.tools.priced_task import cell_objective

    quiet_libraries()  # building the model on the meta device warns of what is not the runner's news
    try:
        memory = estimate(cell.model.name, cell.method, cell.train.batch_size, cell.train.max_length,
                          optimizer=cell.train.optimizer, dtype=cell.train.weights_dtype,
                          settings=method_settings(cell.method_config), attention=cell.train.attention,
                          gradient_checkpointing=cell.train.gradient_checkpointing, shards=shards,
                          kernels=cell.train.kernels, task=cell.task, pooling=cell.train.pooling,
                          precision=cell.train.precision, step_device=step_device,
                          eval_batch_size=cell.train.eval_batch_size,
                          objective=cell_objective(cell))["memory"]
    except Exception:  # a model offline, a method that fails to build on the meta device: no prediction, so the
        memory = None  # scheduler's default memory; the cell itself then says what is wrong
    if key is not None:
        cache.store(key, memory, "plan")
    return memory


# Training rates the harness measured on a named GPU (--gpu), with where: a cell's time is its FLOPs at this rate.
# Measured on the largest shape timed (full fine-tuning of a 1.1B LLaMA, 16 x 1,024 tokens per step, bf16): smaller
# models and shorter sequences run below it, so times at it are a lower bound.
GPU_RATES = {
    "h200": (0.351 * 989.4e12, "H200 SXM: 35.1 % MFU of its 989.4 TFLOP/s bf16 peak, docs/measurements/"
                               "gpu-perf-2026-11-30.md"),
}


def measured_rate(store, suite: str) -> tuple[float | None, float, int]:
    """(median training FLOP/s, median load + evaluation seconds, records) of the suite's ok records."""
    records = [r for r in store.records(suite)[0] if r["status"] == "ok"] if store.suite_dir(suite).is_dir() else []
    rates = [r["time"].get("train_flops_per_s") for r in records]
    rates = [x for x in rates if isinstance(x, (int, float)) and x > 0]
    overheads = [(r["time"].get("load_s") or 0) + (r["time"].get("eval_s") or 0) for r in records]
    return (statistics.median(rates) if rates else None, statistics.median(overheads) if overheads else 0.0,
            len(rates))


def print_plan(cells: list[Cell], executor, tflops: float | None, store, gpu: str | None = None) -> None:
    """One line per cell (its training and evaluation FLOPs, and time), then the totals, to stdout; notes to
    stderr. The rate: --tflops, else a named GPU's measured rate (--gpu, GPU_RATES), else this store's records'."""
    from bench.methods.base import keep_out_optional_packages

    if tflops is not None and not tflops > 0:
        raise BadInput(f"--tflops must be a positive number, got {tflops}", "--tflops")
    if gpu is not None and gpu not in GPU_RATES:
        raise BadInput(f"no measured rate for GPU '{gpu}'", "--gpu", GPU_RATES)
    if gpu is not None and tflops is not None:
        raise BadInput("--gpu and --tflops both give the rate: give one", "--gpu")
    keep_out_optional_packages({cell.method for cell in cells})
    suite = cells[0].suite if cells else None
    if gpu is not None:
        tflops = GPU_RATES[gpu][0] / 1e12
    rate, overhead, n = (tflops * 1e12, 0.0, 0) if tflops else measured_rate(store, suite) if suite else (None, 0.0, 0)
    known: dict = {}
    # the shapes of the cells whose steps are known, and of those that train nothing (their evaluation's model)
    priced = [pricing_cell(at_priced_length(c, known)) for c in cells
              if not trains(c) or cell_steps(c, known) is not None]
    price_shapes(priced, known, workers=pricing_workers())
    total_flops, total_eval, total_s, unknown = 0, 0, 0.0, 0
    for cell in cells:
        flops, how = cell_flops(cell, known)
        if flops is None:  # unknown whatever its evaluation costs: its shape was not priced for it
            unknown += 1
            print(f"{cell.line()}  train FLOPs {how}")
            continue
        evaluation, evaluated = eval_flops(cell, known)
        shown = f"  train FLOPs {flops:.3g} ({how}), eval FLOPs " + (
            f"{evaluation:.3g} ({evaluated})" if evaluation is not None else evaluated)
        if evaluation is None:
            unknown += 1
            print(f"{cell.line()}{shown}")
            continue
        seconds = (flops + evaluation) / rate + overhead if rate else None
        total_flops += flops
        total_eval += evaluation
        total_s += seconds or 0.0
        length = priced_length(cell, known)[2]
        print(f"{cell.line()}{shown}" + (f"; priced at {length}" if length else "") +
              (f"  ≈ {_duration(seconds)}" if seconds is not None else ""))
    slots = getattr(executor, "slots", None)
    line = f"{counted(len(cells), 'cell')}, {total_flops:.3g} training FLOPs + {total_eval:.3g} evaluation FLOPs"
    line += f" ({counted(unknown, 'cell')} unknown, not counted)" if unknown else ""
    if rate:
        source = (f"--gpu {gpu}: {GPU_RATES[gpu][1]}" if gpu else f"--tflops {tflops:g}" if tflops else
                  f"the median of {counted(n, 'ok record')} of {suite} in {store.root}, plus their median load and "
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
