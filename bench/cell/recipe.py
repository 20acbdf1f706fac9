"""One cell, read top to bottom: setup -> train -> evaluate.

setup: the model with its head, the training data, evaluation sets and objective, the method applied.
train: the training loop (bench/cell/train.py), with evaluations during training if configured.
evaluate: the final evaluation of every split and template.
What is measured is not written here: instruments (bench/cell/instruments.py) hook these phases and write
their own figures (bench/figures.py). `run_cell` never raises for a problem of the cell itself: the
returned record says what happened (ok, failed, unsupported, oom, diverged). Executors run it in a
process of its own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import env, methods
from bench.cell import evaluate as scoring
from bench.cell import instruments, multitask
from bench.cell import train as training
from bench.cell.batching import to_device
from bench.cell.curves import CurveWriter
from bench.cell.kernels import apply_kernels
from bench.cell.languages import language_swaps
from bench.cell.measure import head_elements
from bench.cell.objectives import Objective, objective_for
from bench.cell.sharded import refuse_unshardable, shard
from bench.errors import Unsupported
from bench.methods.base import Adapted, ApplyContext
from bench.methods.external import save_adapter, saved_state
from bench.models import Bundle, enable_gradient_checkpointing, load_bundle, quiet_libraries
from bench.plan.cellspec import Cell
from bench.record import error_info, finish, new_record
from bench.tasks import crosslingual, metrics
from bench.tasks.features import EvalSet
from bench.tasks.mixture import is_multitask
from bench.tasks.prepare import TrainingData, datasets
from bench.tasks.spec import TaskSpec
from bench.tensors import count_params


@dataclass
class Run:
    """What setup made, for the phases after it."""

    cell: Cell
    device: torch.device
    bundle: Bundle
    body_params: int  # the pretrained model's parameter elements without its task head, before the method
    data: TrainingData
    objective: Objective
    adapted: Adapted
    evaluation: TaskSpec  # the task scored (the cell's task, or the one it is evaluated on)
    evalsets: dict[str, list[EvalSet]]
    autocast: Callable
    compute_dtype: str  # what matrix products run in (bench.cell.train.compute_dtype)
    result: training.TrainResult | None = None  # set by train
    member_evalsets: dict = field(default_factory=dict)  # a multi-task cell's, per task (bench/cell/multitask.py)
    predict_main: Callable = scoring.predict  # the final evaluation's main-split prediction (InferenceSpeed times it)


def run_cell(cell: Cell, quiet: bool = False, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """The cell's record. `checkpoint` (if given) receives the record as filled so far after loading
    and then with training progress, so a cell killed later (timeout, kill) keeps what it measured."""
    prepare_process(cell)
    record = new_record(cell)
    record["env"].update(env.collect(), threads=torch.get_num_threads())  # collect() is cached per process
    try:
        refuse_unshardable(cell.method)  # before any work: a sharded rank of a method FSDP2 cannot run
        tools = instruments.standard()
        seed_everything(cell.seed)
        with tools.window("loading", None, record):
            run = setup(cell, device_for_run())
        tools.at("loaded", run, record)
        if run.adapted.trains and not record["params"]["trainable"]:
            raise Unsupported(f"{cell.method} leaves no parameter of {cell.model.name} trainable here")
        if checkpoint:
            checkpoint(record)
        tools.at("before_training", run, record)
        if run.adapted.trains:
            with tools.window("training", run, record):
                run.result = train(run, record, tools, quiet, checkpoint)
            tools.at("trained", run, record)
            if run.result.diverged_at_step is not None:  # nothing trained is left to evaluate
                return finish(record, "diverged", {"type": "Diverged", "message": "the training loss became "
                              f"non-finite at step {run.result.diverged_at_step}", "where": None, "traceback": None})
        if run.evalsets or run.member_evalsets:  # a pre-training stage is scored on nothing: its state is what it makes
            with tools.window("evaluating", run, record):
                evaluate(run, record)
            tools.at("evaluated", run, record)
        if cell.adapter_dir and run.adapted.trains:
            save_adapter(run.adapted, cell, Path(cell.adapter_dir))
        return finish(record, "ok")
    except Unsupported as e:
        return finish(record, "unsupported", {"type": "Unsupported", "message": str(e), "where": None,
                                              "traceback": None, "environment": e.environment})
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        return finish(record, "oom", error_info(e))
    except Exception as e:  # the cell failed; the grid goes on
        return finish(record, "failed", error_info(e))


def setup(cell: Cell, device: torch.device) -> Run:
    """Model, method, data, objective and evaluation sets, then the method applied: in the order each needs
    the previous."""
    task, tcfg = cell.task, cell.train
    method = methods.for_cell(cell.method)
    bundle = load_bundle(cell.model, task.type, task.num_labels, cell.seed, device, pooling=tcfg.pooling,
                         weights_dtype=tcfg.weights_dtype, attention=tcfg.attention)
    if task.members:  # a mixture: a head per task on a classifier model
        multitask.install_heads(bundle, task, cell.seed)
    apply_kernels(bundle.model, tcfg.kernels)  # before the method adapts the model: every method runs on them
    body = count_params(bundle.model)["total"] - head_elements(bundle.model, bundle.head_modules)[0]
    data, evalsets = datasets(task, bundle, tcfg, cell.seed, cell.data_dir, method.in_context)
    objective = objective_for(tcfg.objective, bundle, task.type, tcfg.tfew_lm, tcfg.unlikelihood_offset,
                              tcfg.unlikelihood)
    if task.members:  # a mixture: each row's own task (its head, a router's choice)
        objective = multitask.objective(bundle, task, objective)
    members = multitask.member_evalsets(task, bundle, tcfg, cell.data_dir, cell.seed) if is_multitask(task) else {}
    steps = tcfg.steps_for(len(data.features))
    autocast = training.autocast_for(device, tcfg.precision)
    compute_dtype = training.compute_dtype(device, tcfg.precision)

    def calibration(n_batches: int, per_example: bool = False) -> list[dict]:  # for methods that look at data first
        rows = training.training_batches(data.features, tcfg, cell.seed)
        drawn = [next(rows) for _ in range(n_batches)]
        return [to_device(objective.collate(group), device)
                for group in ([[row] for batch in drawn for row in batch] if per_example else drawn)]

    adapted = method.apply(bundle.model, cell.method_config,
                           ApplyContext(bundle, tcfg, steps, calibration, device, task, data.rows,
                                        [stage_state(cell, ref, device) for ref in cell.stage_refs], autocast,
                                        objective.loss))
    if cell.init_from:
        start_from_stage(adapted, cell, device, bundle.head_modules)
    adapted.model.to(device)
    if tcfg.gradient_checkpointing:
        enable_gradient_checkpointing(adapted.model)
    shard(adapted.model)  # a rank of a cell sharded over several GPUs (bench/cell/sharded.py); else nothing
    return Run(cell, device, bundle, body, data, objective, adapted, task.evaluation, evalsets, autocast, compute_dtype,
               member_evalsets=members)


def train(run: Run, record: dict, tools: instruments.Instruments, quiet: bool,
          checkpoint: Callable[[dict], None] | None) -> training.TrainResult:
    """The training loop, scoring when `eval_every` asks (outside the measured window): the selection split when
    the suite has one (keep_best chooses there: bench/config.py refuses it otherwise), else the main split, whose
    scores then only show how training went (a pre-training stage has neither: bench/plan/stages.py refuses
    eval_every there). Its summary (steps, losses, evaluations) goes into the record."""
    cell = run.cell
    main_score, higher = None, True
    if run.evalsets:
        higher = metrics.METRICS[run.evaluation.main_metric].higher_is_better
        scored = run.data.selection[0] if run.data.selection else run.evalsets[""][0]
        if cell.train.eval_every:
            record["train"]["evals_on"] = "selection" if run.data.selection else "main"

        def main_score() -> float | None:
            with tools.window("paused", run, record):
                scores = scoring.evaluate(run.bundle, run.adapted.model, scored, run.evaluation,
                                          cell.train.eval_batch_size, run.device, run.autocast)
                return scores[run.evaluation.main_metric]

    progress = checkpoint and (lambda p: checkpoint({**record, "train": {**record["train"], **p}}))
    curve = CurveWriter(cell.curve_path, cell.train.steps_for(len(run.data.features)), cell.id,
                        "selection" if run.data.selection else "main")
    try:
        result = training.train(run.adapted, run.data.features, run.objective, cell.train, cell.seed, run.device,
                                quiet, main_score, higher, progress=progress, curve=curve)
    finally:  # a failed step keeps the curve up to its last read
        curve.close()
    record["train"].update(result.summary())
    return result


def evaluate(run: Run, record: dict) -> None:
    """Every split under every template; the main split's metrics are the cell's scores. The selection split's
    go apart (`scores.selection`): they choose a sweep's setting and are never reported. A multi-task cell scores
    each of its tasks (bench/cell/multitask.py)."""
    if run.member_evalsets:
        return multitask.evaluate(run.bundle, run.adapted.model, run.cell.task, run.member_evalsets,
                                  run.cell.train.eval_batch_size, run.device, run.autocast, record)
    swap = language_swaps(run.cell, run.adapted, run.device)  # MAD-X: each language its own adapters
    scores, per_template = scoring.evaluate_all(run.bundle, run.adapted.model, run.evalsets, run.evaluation,
                                                run.cell.train.eval_batch_size, run.device, run.autocast,
                                                run.predict_main, swap)
    if swap is not None:
        swap("")  # the training language's own adapters back, as trained (and saved)
    scores.update(crosslingual.transfer_scores(run.evaluation, scores))  # a cross-lingual task's mean over targets
    record["scores"]["metrics"] = scores
    if run.data.selection:
        record["scores"]["selection"] = scoring.evaluate_all(
            run.bundle, run.adapted.model, {"": run.data.selection}, run.evaluation, run.cell.train.eval_batch_size,
            run.device, run.autocast)[0]
        record["scores"]["n_selection_examples"] = len(run.data.selection[0].features)
    if len(per_template) > 1:
        record["scores"]["per_template"] = per_template
    record["scores"]["n_examples"] = len(run.evalsets[""][0].features)


def start_from_stage(adapted: Adapted, cell: Cell, device: torch.device, head_modules=()) -> None:
    """Load the state a pre-training stage or another task's cell saved (bench/plan/stages.py) into the freshly
    applied method, all but a classifier's task head (`head_modules`): the head is the new task's own."""
    heads = set(head_modules)

    def in_head(name: str) -> bool:
        return bool(heads & set(name.split(".")))

    # the fresh head's own tensors in its place: some methods' loaders (peft's) want every tensor they store
    fresh = {name: t for name, t in adapted.state_to_store().items() if in_head(name)}
    saved = saved_state(cell.init_dir, cell.init_from, device)
    adapted.load_state({**{name: t for name, t in saved.items() if not in_head(name)}, **fresh})


def stage_state(cell: Cell, ref: str, device: torch.device) -> dict:
    """The state a stage cell that the method's settings name saved (Method.stage_settings)."""
    return saved_state(str(Path(cell.stages_dir) / ref) if cell.stages_dir else None, ref, device)


def device_for_run() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_process(cell: Cell) -> None:
    """Threads, quiet libraries and the suite's own method modules, before anything of the cell runs."""
    torch.set_num_threads(cell.threads)  # env.threads records it
    quiet_libraries()
    methods.import_modules(cell.method_modules)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
