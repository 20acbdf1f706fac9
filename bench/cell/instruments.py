"""Instruments: what measures a cell, kept out of the recipe (bench/cell/recipe.py) that it measures.

The recipe announces its moments, and each instrument writes its own figures (bench/figures.py) at
the moments it cares about, in the order `standard()` lists them:

    loading          (window)  setup: model, data, objective, method, evaluation sets
    loaded           the adapted model exists, untrained (what setup resolved is written first)
    before_training  the untrained model, just before training would start (also for methods that
                     do not train: their costs are measured on the same model)
    training         (window)  the training loop
    paused           (window, inside training) an evaluation during training: not part of its peaks
    trained          training ended (the run's `result` is set)
    evaluating       (window)  the final evaluation
    evaluated        the scores are in (the stored state's size, then the prediction speed)

An instrument subclasses `Instrument` and defines any of these as methods taking (run, record); windows are
context managers. A method that is not a moment (a misspelt one) fails as the class is defined, and a record
takes only the figures the registry declares (bench/record.py: FigureSection), so neither fails silently.
"""

from __future__ import annotations

import contextlib
import time

import torch

from bench.cell.eval_probe import measured_eval_peak
from bench.cell.forgetting import general_text, lm_loss
from bench.cell.measure import (
    PeakMemory,
    TimedPrediction,
    head_elements,
    inference_speed,
    method_params,
    predicted_peak,
    stored_size,
    timed,
    utilisation,
    weight_bytes,
)
from bench.cell.probe import first_step, inference_flops, step_peak_bytes, training_flops
from bench.cell.sharded import sharded
from bench.layers.attention_prefix import implementation_of
from bench.models import dtype_name
from bench.optimizers import update_bytes
from bench.tasks.data import resolved_revision

# The recipe's moments (bench/cell/recipe.py announces them), each a call or a window (a context manager).
MOMENTS = {"loading": "window", "loaded": "call", "before_training": "call", "training": "window",
           "paused": "window", "trained": "call", "evaluating": "window", "evaluated": "call"}


class Instrument:
    """What measures a cell at some of the recipe's moments; every public method must be one of MOMENTS."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if callable(value) and not name.startswith("_") and name not in MOMENTS:
                raise TypeError(f"{cls.__name__}.{name} is not a moment of the recipe; moments: {', '.join(MOMENTS)}")


class Resolved(Instrument):
    """What setup resolved that the cell's configuration leaves open: the weights' dtype, the attention
    implementation and the matrix products' dtype (`auto`), the data's hub revisions, the training rows
    drawn (few-shot, subsampled and mixture cells), where the weights came from."""

    def loaded(self, run, record):
        cell, tasks = run.cell, {run.cell.task.name: run.cell.task, run.evaluation.name: run.evaluation}
        drawn = cell.train.shots or cell.train.max_train_samples or cell.task.members
        record["train"]["example_ids"] = run.data.example_ids if drawn else None
        record["train"]["weights_dtype"] = dtype_name(run.bundle.model)
        record["train"]["attention"] = implementation_of(run.bundle.model)
        record["train"]["compute_dtype"] = run.compute_dtype  # what `precision` resolved to
        record["train"]["gradient_checkpointing"] = cell.train.gradient_checkpointing  # shown in the report
        record["env"]["data_revisions"] = {t.name: resolved_revision(t, cell.data_dir) for t in tasks.values()}
        record["cell"]["source"] = "external" if run.adapted.external else "harness"


class Timer(Instrument):
    """time.load_s and time.eval_s: wall-clock seconds of the loading and evaluating windows."""

    def loading(self, run, record):
        return timed(record["time"], "load_s")

    def evaluating(self, run, record):
        return timed(record["time"], "eval_s")


class TimeToTraining(Instrument):
    """time.to_training_s: wall-clock seconds from the loading window's opening to the training window's."""

    def __init__(self):
        self.started = None

    @contextlib.contextmanager
    def loading(self, run, record):
        self.started = time.perf_counter()
        yield

    @contextlib.contextmanager
    def training(self, run, record):
        record["time"]["to_training_s"] = time.perf_counter() - self.started
        yield


class StaticFigures(Instrument):
    """params.* and the weights' bytes of the adapted model; after evaluation, the stored state's size."""

    def loaded(self, run, record):
        record["params"].update(run.adapted.params())
        head_trainable = head_elements(run.adapted.model, run.bundle.head_modules)[1]
        record["params"].update(method_params(record["params"], head_trainable, run.body_params))
        record["memory"].update(weight_bytes(run.adapted.model))

    def evaluated(self, run, record):
        record["params"].update(stored_size(run.adapted.state_to_store()))
        record["params"].update(run.adapted.composed)


class StepProbe(Instrument):
    """The instrumented step (bench/cell/probe.py) before training, on the probe batch; it is also the
    warm-up, so the training window's peaks start after it. After training: the memory breakdown,
    the predicted peak and the training FLOPs."""

    def __init__(self):
        self.step = None

    def before_training(self, run, record):
        if not run.adapted.trains:
            return
        self.step = first_step(run.adapted.model, run.data.features, run.cell.train.batch_size, run.cell.seed,
                               run.objective, run.device, run.autocast)

    def trained(self, run, record):
        memory, result = record["memory"], run.result
        trainable = [p.nbytes for p in run.adapted.model.parameters() if p.requires_grad]  # each Parameter once
        memory.update(activation_bytes=self.step.activation_bytes, grad_bytes=self.step.grad_bytes,
                      optimizer_bytes=result.optimizer_bytes,
                      step_peak_bytes=step_peak_bytes(self.step, update_bytes(result.optimizer_update, trainable)))
        record["flops"].update(training_flops(self.step, record["params"]["total"], run.bundle.kind,
                                              result.positions, result.tokens))
        memory["predicted_peak_bytes"] = predicted_peak(memory, trains=True, evaluates=evaluates(run))


def evaluates(run) -> bool:
    """Whether the cell evaluates: all but a pre-training stage, scored on nothing (bench/cell/recipe.py)."""
    return bool(run.evalsets or run.member_evalsets)


class EvalProbe(Instrument):
    """memory.eval_peak_bytes: the longest batch of each evaluation split and template through the forward the
    evaluation predicts with (bench/cell/eval_probe.py; generation's decoding, every row to max_new_tokens), before
    training (training changes no shape, and generation runs its longest whatever the weights); then, for a
    cell that trains nothing, memory.predicted_peak_bytes (a training cell's: StepProbe, once trained)."""

    def before_training(self, run, record):
        memory, model = record["memory"], run.adapted.model
        if run.evalsets and not sharded(model):
            memory["eval_peak_bytes"] = measured_eval_peak(run.bundle, model, run.evalsets, run.evaluation,
                                                           run.cell.train.eval_batch_size, run.device, run.autocast)
        if not run.adapted.trains:
            memory["predicted_peak_bytes"] = predicted_peak(memory, trains=False, evaluates=evaluates(run))


class InferenceFlops(Instrument):
    """flops.inference_per_example (and the cost model's) on the untrained model, once it is loaded:
    generation's decoding length depends on the weights, so every method is counted at the same
    starting point."""

    def loaded(self, run, record):
        if not run.evalsets:  # a pre-training stage predicts nothing
            return
        record["flops"].update(inference_flops(run.bundle, run.adapted.model, run.evalsets[""][0],
                                               run.evaluation, run.device, run.autocast, record["params"]["total"]))


class TrainingPeak(Instrument):
    """memory.*_peak_* of the training window (bench/cell/measure.py: PeakMemory), and its memory sampled over
    time (memory.train_*: bench/cell/memory_trace.py); evaluations during training are left out. On CUDA,
    memory.device_other_bytes: what the device held besides the weights as the window opened."""

    def __init__(self):
        self.peak, self.held = None, None

    @contextlib.contextmanager
    def training(self, run, record):
        self.peak = PeakMemory(run.device, trace=True)
        self.held = torch.cuda.memory_allocated(run.device) if self.peak.cuda else None
        with self.peak:
            yield

    def paused(self, run, record):
        return self.peak.excluded()

    def trained(self, run, record):
        memory = record["memory"]
        memory.update(self.peak.figures, peak_bytes=self.peak.peak_bytes, peak_source=self.peak.source)
        memory.update(self.peak.trace_figures)
        memory["device_other_bytes"] = None if self.held is None else self.held - memory["weights_bytes"]


class Forgetting(Instrument):
    """forgetting.* with `train.forgetting`: the LM loss on general text (bench/cell/forgetting.py) of the
    untrained model just before training, and of the trained model once training ended; both outside the
    training window. On CUDA the allocator's cache is emptied after the first, so that the training window
    does not start with the blocks of its logits cached (the probe step, after it, warms the allocator up)."""

    def __init__(self):
        self.text = None

    def before_training(self, run, record):
        if not (run.cell.train.forgetting and run.adapted.trains):
            return
        self.text = general_text(run.bundle, run.cell.train.forgetting_text)
        if self.text is None:  # a classifier head: no LM loss to measure
            return
        record["forgetting"].update(objective=self.text.objective, tokens=self.text.tokens,
                                    text_sha256=self.text.sha256, lm_loss_before=self._loss(run))
        if run.device.type == "cuda":
            torch.cuda.empty_cache()

    def trained(self, run, record):
        if self.text is None or run.result.diverged_at_step is not None:  # nothing trained to measure
            return
        section = record["forgetting"]
        section["lm_loss_after"] = self._loss(run)
        section["delta"] = section["lm_loss_after"] - section["lm_loss_before"]

    def _loss(self, run) -> float:
        return lm_loss(run.adapted.model, self.text, run.bundle.tokenizer.pad_token_id,
                       run.cell.train.eval_batch_size, run.device, run.autocast)


class Throughput(Instrument):
    """time.train_s, compile_s and the rates over train_s (samples, tokens, FLOPs per second, MFU)."""

    def trained(self, run, record):
        times, result = record["time"], run.result
        times["train_s"] = result.train_s
        times["compile_s"] = result.compile_s
        times["train_samples_per_s"] = result.samples / result.train_s if result.train_s else None
        times["train_tokens_per_s"] = result.tokens / result.train_s if result.train_s else None
        times["step_s_median"] = record["train"]["step_s_median"]
        times.update(utilisation(record["flops"]["train_total"], times["train_s"], record["env"]["device"],
                                 run.compute_dtype))


class EvaluationPeak(Instrument):
    """memory.eval_peak_allocated_bytes: the CUDA allocator's peak over the final evaluation."""

    @contextlib.contextmanager
    def evaluating(self, run, record):
        with PeakMemory(run.device) as peak:
            yield
        record["memory"]["eval_peak_allocated_bytes"] = peak.figures["device_peak_allocated_bytes"]


class InferenceSpeed(Instrument):
    """time.infer_*: how fast the trained model predicts, one example at a time and in evaluation batches
    (those timed as the final evaluation predicts them); then the same with the method's update merged into
    a copy of the weights (mergeable methods)."""

    @contextlib.contextmanager
    def evaluating(self, run, record):
        self.prediction = run.predict_main = TimedPrediction()
        yield

    def evaluated(self, run, record):
        if not run.evalsets:  # a multi-task cell: its tasks' heads predict apart; no one speed stands for them
            return
        args = (run.evalsets[""][0], run.evaluation, run.cell.train.eval_batch_size, run.device, run.autocast)
        record["time"].update(inference_speed(run.bundle, run.adapted.model, *args,
                                              batched_s=self.prediction.seconds))
        if run.adapted.merge is None or sharded(run.adapted.model):  # FSDP refuses the copy a merge is made in
            return
        try:
            merged = run.adapted.merge()
        except torch.cuda.OutOfMemoryError:  # no room for a merged copy beside the model: those figures stay null
            torch.cuda.empty_cache()
            return
        speed = inference_speed(run.bundle, merged, *args)
        record["time"].update({"infer_latency_merged_s": speed["infer_latency_s"],
                               "infer_examples_per_s_merged": speed["infer_examples_per_s"]})
        del merged


class Instruments:
    """The instruments of one cell, called at the recipe's moments in list order (windows nest in it)."""

    def __init__(self, *instruments):
        self.items = instruments

    def at(self, moment: str, run, record) -> None:
        _check(moment, "call")
        for instrument in self.items:
            if hasattr(instrument, moment):
                getattr(instrument, moment)(run, record)

    @contextlib.contextmanager
    def window(self, moment: str, run, record):
        _check(moment, "window")
        with contextlib.ExitStack() as stack:
            for instrument in self.items:
                if hasattr(instrument, moment):
                    stack.enter_context(getattr(instrument, moment)(run, record))
            yield


def _check(moment: str, kind: str) -> None:
    if MOMENTS.get(moment) != kind:
        raise ValueError(f"{moment!r} is not a {kind} moment of the recipe; moments: "
                         f"{', '.join(f'{m} ({k})' for m, k in MOMENTS.items())}")


def standard() -> Instruments:
    """Every cell's instruments. Order matters where one reads another's figures or windows nest: the time to
    training opens first, so it encloses the others' loading; the step probe writes flops.train_total before
    Throughput divides it by time; the probe runs before the training window opens (its warm-up must not count
    in the peaks); the evaluation's peak window encloses its timer, so eval_s does not include resetting and
    reading the peaks; the speed of prediction is measured after the stored state's size is read, as merging
    may change the adapted model; the untrained model's loss on general text and the evaluation's longest batch are
    measured before the probe step, so that the probe warms up what training runs with; the evaluation's probe
    writes eval_peak_bytes before the step probe's predicted peak reads it."""
    return Instruments(TimeToTraining(), EvaluationPeak(), Timer(), Resolved(), StaticFigures(), Forgetting(),
                       EvalProbe(), StepProbe(), InferenceFlops(), TrainingPeak(), Throughput(), InferenceSpeed())
