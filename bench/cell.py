"""One cell, start to finish: load model and data -> apply method -> train -> evaluate -> measure.

`run_cell` never raises for a problem of the cell itself: the returned record says what happened
(ok, failed, unsupported, oom, diverged). Executors run it in a process of its own.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable

import torch

from bench import env, methods
from bench.errors import Unsupported
from bench.grid import Cell
from bench.measure import PeakMemory, predicted_peak, stored_size, timed, utilisation, weight_bytes
from bench.methods.base import ApplyContext
from bench.models import load_bundle
from bench.objectives import objective_for
from bench.probe import (StepMeasure, inference_flops, measure_step, probe_batch, training_flops,
                         workspace_bytes)
from bench.record import error_info, finish, new_record
from bench.tasks import metrics
from bench.tasks.data import resolved_revision
from bench.tasks.evaluate import evaluate, evaluate_all
from bench.tasks.features import collate
from bench.tasks.prepare import evaluation_sets, training_data
from bench.train import TrainResult, autocast_for, batches, compute_dtype, total_steps, train


def device_for_run() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


# Known, harmless messages from libraries that would bury a cell's own output.
_QUIET_WARNINGS = [r".*is_gradient_checkpointing.*", r"Position ids are not supported.*",
                   r"fan_in_fan_out is set to False but the target module is `Conv1D`.*"]


def quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def run_cell(cell: Cell, quiet: bool = False, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """The cell's record. `checkpoint` (if given) receives the record as filled so far after loading
    and then with training progress, so a cell killed later (timeout, kill) keeps what it measured."""
    torch.set_num_threads(cell.threads)  # before anything runs: env.threads records it
    quiet_libraries()
    methods.import_modules(cell.method_modules)
    record = new_record(cell)
    record["env"].update(env.collect(), threads=torch.get_num_threads())  # collect() is cached per process
    times, memory = record["time"], record["memory"]
    device = device_for_run()
    try:
        seed_everything(cell.seed)
        task, tcfg = cell.task, cell.train
        evaluation = task.evaluation
        with timed(times, "load_s"):
            bundle = load_bundle(cell.model, task.type, task.num_labels, cell.seed, device, pooling=tcfg.pooling)
            data = training_data(task, bundle, tcfg, cell.seed, cell.data_dir)
            feats = data.features
            objective = objective_for(tcfg.objective, bundle, task.type)

            def calibration(n_batches: int) -> list[dict]:
                rows = batches(feats, tcfg.batch_size, cell.seed)
                return [{k: v.to(device) for k, v in collate(next(rows), bundle.tokenizer.pad_token_id).items()}
                        for _ in range(n_batches)]

            ctx = ApplyContext(bundle, tcfg, total_steps(tcfg, len(feats)), calibration, device, task, data.rows)
            adapted = methods.apply(cell.method, cell.method_config, bundle.model, ctx)
            adapted.model.to(device)
            evalsets = evaluation_sets(task, bundle, tcfg, cell.data_dir, data.rows if adapted.in_context else ())
        record["train"]["example_ids"] = data.example_ids if (tcfg.shots or tcfg.max_train_samples) else None
        record["env"]["data_revisions"] = {t.name: resolved_revision(t, cell.data_dir)
                                           for t in {task.name: task, evaluation.name: evaluation}.values()}
        record["params"].update(adapted.params())
        memory.update(weight_bytes(adapted.model))
        if adapted.trains and not record["params"]["trainable"]:
            raise Unsupported(f"{cell.method} leaves no parameter of {cell.model.name} trainable here")
        autocast = autocast_for(device, tcfg.precision)
        higher = metrics.METRICS[evaluation.main_metric].higher_is_better
        if checkpoint:
            checkpoint(record)
        if adapted.trains:  # the instrumented step is also the warm-up: the training window's peaks start after it
            probe = probe_batch(feats, tcfg.batch_size, cell.seed, objective.collate)
            probe = {k: v.to(device) for k, v in probe.items()}
            step = measure_step(adapted.model, probe, device, autocast, objective.loss)
        record["flops"].update(inference_flops(bundle, adapted.model, evalsets[""][0], evaluation, device, autocast,
                                               record["params"]["total"]))
        peak = PeakMemory(device)

        def main_score() -> float | None:
            with peak.excluded():  # evaluations are not part of the training window
                return evaluate(bundle, adapted.model, evalsets[""][0], evaluation, tcfg.eval_batch_size, device,
                                autocast)[evaluation.main_metric]

        if adapted.trains:
            with peak:
                result = train(adapted, feats, objective, tcfg, cell.seed, device, quiet, main_score, higher,
                               progress=checkpoint and (lambda p: checkpoint({**record, "train": {**record["train"], **p}})))
            _record_training(record, result, step, peak, bundle.kind)
            times.update(utilisation(record["flops"]["train_total"], times["train_s"], record["env"]["device"],
                                     compute_dtype(device, tcfg.precision)))
            if result.diverged_at_step is not None:  # nothing trained is left to evaluate
                return finish(record, "diverged", {"type": "Diverged", "message": "the training loss became "
                              f"non-finite at step {result.diverged_at_step}", "where": None, "traceback": None})
        with PeakMemory(device) as eval_peak, timed(times, "eval_s"):
            scores, per_template = evaluate_all(bundle, adapted.model, evalsets, evaluation, tcfg.eval_batch_size,
                                                device, autocast)
        record["scores"]["metrics"] = scores
        if len(per_template) > 1:
            record["scores"]["per_template"] = per_template
        memory["eval_peak_allocated_bytes"] = eval_peak.figures["device_peak_allocated_bytes"]
        record["scores"]["n_examples"] = len(evalsets[""][0].features)
        record["params"].update(stored_size(adapted.state_to_store()))
        return finish(record, "ok")
    except Unsupported as e:
        return finish(record, "unsupported", {"type": "Unsupported", "message": str(e), "where": None,
                                              "traceback": None, "environment": e.environment})
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        return finish(record, "oom", error_info(e))
    except Exception as e:  # the cell failed; the grid goes on
        return finish(record, "failed", error_info(e))


def _record_training(record: dict, result: TrainResult, step: StepMeasure, peak: PeakMemory, kind: str) -> None:
    """The figures of a training run: memory breakdown and peaks, FLOPs, times, the loss curve summary."""
    memory, times = record["memory"], record["time"]
    memory.update(peak.figures, peak_bytes=peak.peak_bytes, peak_source=peak.source,
                  activation_bytes=step.activation_bytes, grad_bytes=step.grad_bytes,
                  optimizer_bytes=result.optimizer_bytes,
                  workspace_bytes=workspace_bytes(step, memory["trainable_bytes"]))
    memory["predicted_peak_bytes"] = predicted_peak(memory)
    record["flops"].update(training_flops(step, record["params"]["total"], kind, result.positions, result.tokens))
    record["train"].update(result.summary())
    times["train_s"] = result.train_s
    times["train_samples_per_s"] = result.samples / result.train_s if result.train_s else None
    times["train_tokens_per_s"] = result.tokens / result.train_s if result.train_s else None
    times["step_s_median"] = record["train"]["step_s_median"]


