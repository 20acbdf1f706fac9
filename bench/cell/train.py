"""The training loop: plain PyTorch, top to bottom.

The configured optimizer (bench/optimizers.py; no decay on biases and norm weights), linear warmup then linear
decay to zero, gradient clipping, dynamic padding, a seeded data order, bf16 autocast on CUDA. Methods hook in
after backward (gradient masks) and after each optimizer step (rank reallocation).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bench.cell.batching import batches, positions_in, to_device, tokens_in
from bench.cell.curves import CurveWriter
from bench.cell.measure import optimizer_state_bytes
from bench.cell.objectives import Objective
from bench.cell.sharded import whole
from bench.config import TrainConfig
from bench.methods.base import Adapted
from bench.models import is_encoder_decoder
from bench.optimizers import OPTIMIZERS, update_of


def compute_dtype(device, precision: str) -> str:
    """The dtype matrix products run in: bf16 under autocast (`bf16`, or `auto` on CUDA), else fp32."""
    return "bf16" if precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda") else "fp32"


def autocast_for(device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    if compute_dtype(device, precision) == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def training_batches(features: list[dict], train: TrainConfig, seed: int):
    """The batches training draws from `features`, endless: the sampler `train` chooses (uniform, balanced by class,
    or grouped by length), each example under a template drawn afresh where `redraw_templates` says."""
    source = batches(features, train.batch_size, seed, train.balanced_batches, train.group_by_length)
    return redrawn(source, seed) if train.redraw_templates else source


def redrawn(data, seed: int):
    """The batches of `data` with each example under a template drawn afresh (seeded) from its
    `variants` (bench.tasks.features.train_features with all_templates), as T-Few draws one per
    example per step; an example without variants is as it is."""
    rng = random.Random(seed)
    for rows in data:
        yield [rng.choice(f["variants"]) if "variants" in f else f for f in rows]


def compile_model(model: torch.nn.Module, batch: dict, objective: Objective, autocast, device) -> float:
    """torch.compile `model` in place (parameter names, so stored states, stay as they are; dynamic shapes:
    one graph for every padded length) and run one forward and backward on `batch`, so compilation happens
    here and not in the timed steps. Returns its seconds. Gradients are dropped and the random state
    restored: training then runs as it would have."""
    cuda = torch.device(device).type == "cuda"
    start = time.perf_counter()
    model.compile(dynamic=True)
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []):
        with autocast():
            loss = objective.loss(model, to_device(batch, device))
        loss.backward()
    for p in model.parameters():
        p.grad = None
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def optimizer_for(model: torch.nn.Module, train: TrainConfig, no_decay_ids=frozenset()) -> torch.optim.Optimizer:
    """The configured optimizer (bench/optimizers.py); biases and the weights of normalisation layers
    (LayerNorm, RMSNorm, ...) never decay.

    `no_decay_ids` are further parameters that must not decay: partly frozen tensors (gradient masks),
    whose frozen entries a decoupled decay would otherwise change.
    """
    exempt = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(False)}
    exempt |= set(no_decay_ids)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or id(p) in exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[train.optimizer].build([g for g in groups if g["params"]], train.lr)


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainResult:
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    positions: int = 0
    optimizer_bytes: int | None = None  # bench.cell.measure.optimizer_state_bytes after the first step
    optimizer_update: str | None = None  # how the optimizer updates (bench.optimizers.UPDATES)
    compile_s: float | None = None  # train.compile: the warm-up that compiled the model (not in train_s)
    train_s: float = 0.0
    step_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    loss_terms: list[dict[str, float]] = field(default_factory=list)  # each read step's terms (Objective.terms)
    evals: list[dict] = field(default_factory=list)  # {"step": n, "score": main metric}
    best_step: int | None = None
    # the first step (1-based) whose loss was not finite; training stopped at the read of it (loss_read_every)
    diverged_at_step: int | None = None

    def summary(self) -> dict:
        tail = self.losses[-10:]
        return {"steps": self.steps, "samples": self.samples, "tokens": self.tokens, "positions": self.positions,
                "first_loss": self.losses[0] if self.losses else None,
                "final_loss": sum(tail) / len(tail) if tail else None,
                "first_loss_terms": self.loss_terms[0] if self.loss_terms else None,
                "final_loss_terms": _mean_terms(self.loss_terms[-10:]),
                "evals": self.evals, "best_step": self.best_step, "diverged_at_step": self.diverged_at_step,
                "optimizer_update": self.optimizer_update,
                "step_s_median": statistics.median(self.step_s) if self.step_s else None}


def _mean_terms(steps: list[dict[str, float]]) -> dict[str, float] | None:
    """Each loss term's mean over `steps` (final_loss_terms: the last 10, as final_loss)."""
    return {name: sum(step[name] for step in steps) / len(steps) for name in steps[0]} if steps else None


class NoGradient(RuntimeError):
    """Trainable parameters that the first training step's backward did not reach: training would never
    change them, so the cell fails instead of reporting the method as trained."""

    def __init__(self, names: list[str]):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(f"{len(names)} trainable parameter tensor(s) got no gradient in the first training step, "
                         f"so training would never change them: {shown}. The method's parameters are not in "
                         "the model's computation (a defect of the method, or a library that ignores what the "
                         "method passes its forward)")


def require_gradients(model: torch.nn.Module) -> None:
    """Raise NoGradient unless backward reached every trainable parameter (each tied one once)."""
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise NoGradient(missing)


PROGRESS_EVERY_S = 2.0  # how often training reports its progress (a killed cell keeps the last report)
LOSS_READ_EVERY_CUDA = 16  # steps between reads of the losses on CUDA (a read waits for the device)


def loss_read_every(cuda: bool) -> int:
    """Steps between reads of the training losses: each one on CPU (nothing to wait for), every
    LOSS_READ_EVERY_CUDA on CUDA, so the host queues steps ahead of the device instead of waiting for it."""
    return LOSS_READ_EVERY_CUDA if cuda else 1


class StepClock:
    """Each training step's seconds, without making the host wait for the device inside the loop. On CPU the
    host's clock: a step's work is done when its calls return. On CUDA a pair of timing events per step on
    the device's own timeline, read once after training: a step's start event fires when the device
    reaches it, so a step runs from when the device could start it (the previous step done, or the host
    done collating) to the end of its optimizer step."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self._marks: list = []
        self._start = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._marks.append((self._start, end))
        else:
            self._marks.append(time.perf_counter() - self._start)

    def seconds(self) -> list[float]:
        if not self.cuda:
            return list(self._marks)
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1000 for start, end in self._marks]


def train(adapted: Adapted, features: list[dict], objective: Objective, train: TrainConfig, seed: int, device,
          quiet: bool = False, evaluate: Callable[[], float | None] | None = None,
          higher_is_better: bool = True, progress: Callable[[dict], None] | None = None,
          curve: CurveWriter | None = None) -> TrainResult:
    """Train `adapted.model` on `features` with `objective`; `evaluate` (if given) returns the main score;
    `progress` (if given) receives {steps, last_loss, elapsed_s} every PROGRESS_EVERY_S seconds; `curve` (if given)
    receives the steps' losses, learning rates, gradient norms and tokens at each read of the losses, and the
    evaluations (bench/cell/curves.py).

    A step's time runs from batch collation to the end of the optimizer step (StepClock: on CUDA the
    device's timeline, nothing synchronised inside the loop); evaluations during training are not part
    of it. The first step's backward must reach every trainable parameter (NoGradient). The optimizer's
    state is measured after the first step, outside the step's time. Losses are
    read every `loss_read_every` steps; a non-finite one stops training at that read, and the step it
    came from is `diverged_at_step`.
    """
    result = TrainResult()
    model = adapted.model
    steps = train.steps_for(len(features))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_for(model, train, {id(p) for p, _ in adapted.grad_masks})
    result.optimizer_update = update_of(optimizer)
    schedule = linear_schedule(optimizer, int(train.warmup_ratio * steps), steps)
    autocast = autocast_for(device, train.precision)
    cuda = torch.device(device).type == "cuda"
    encoder_decoder = is_encoder_decoder(model)
    best, best_state = None, None
    source = data = training_batches(features, train, seed)
    if train.compile:
        first = next(data)
        result.compile_s = compile_model(model, objective.collate(first), objective, autocast, device)
        data = itertools.chain([first], data)
    clock, pending, read_every = StepClock(cuda), [], loss_read_every(cuda)  # pending: losses not read yet
    curve = curve or CurveWriter(None, steps, "")
    read_at = time.monotonic()  # the last read of the losses (curve's tokens/s), evaluations excluded

    def read_losses() -> None:  # one read of the device for the pending steps' losses, terms and gradient norms
        nonlocal read_at
        rows = torch.stack([torch.stack([t.float() for t in (loss, *terms.values(),
                                                              norm if norm is not None else loss.new_zeros(()))])
                            for loss, terms, norm, _, _ in pending]).tolist()
        names = list(pending[0][1])
        lrs, counted = [p[3] for p in pending], [p[4] for p in pending]
        norms = [row[-1] if pending[i][2] is not None else None for i, row in enumerate(rows)]
        rows = [row[:-1] for row in rows]
        pending.clear()
        values = [row[0] for row in rows]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:  # every later step trains on non-finite weights
            result.diverged_at_step = len(result.losses) + bad + 1
            values, rows = values[: bad + 1], rows[: bad + 1]
        curve.steps(len(result.losses) + 1, values, lrs, norms, counted, time.monotonic() - read_at)
        read_at = time.monotonic()
        result.losses.extend(values)
        result.loss_terms.extend(dict(zip(names, row[1:])) for row in rows)
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}", refresh=False)

    began = reported = time.monotonic()
    model.train()
    bar = tqdm(total=steps, desc="train", unit="step", disable=quiet, position=1, leave=False, dynamic_ncols=True)
    for step in range(steps):
        clock.start()
        rows = next(data)
        batch = objective.collate(rows)
        # counted on the host batch: a count of a device tensor would wait for the device
        step_tokens = tokens_in(batch, encoder_decoder)
        result.tokens += step_tokens
        result.positions += positions_in(batch, encoder_decoder)
        batch = to_device(batch, device)  # without waiting for the device (on CUDA)
        with autocast():
            terms = objective.terms(model, batch)
            loss = sum(terms.values())
        loss.backward()
        if step == 0:  # the probe step and the compile warm-up dropped their gradients
            require_gradients(model)
        for hook in adapted.after_backward:
            hook(step)
        norm = whole(torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)) \
            if train.max_grad_norm is not None else None  # whole: a sharded cell's norm is over all its shards
        lr = optimizer.param_groups[0]["lr"]  # the rate this step takes (the schedule moves it after)
        optimizer.step()
        schedule.step()
        for hook in adapted.after_step:
            hook(step)
        optimizer.zero_grad(set_to_none=True)
        clock.stop()
        if step == 0:
            result.optimizer_bytes = optimizer_state_bytes(optimizer)
        pending.append((loss.detach(), {name: term.detach() for name, term in terms.items()},
                        None if norm is None else norm.detach(), lr, step_tokens))
        result.steps += 1
        result.samples += len(rows)
        bar.update(1)
        report = progress and time.monotonic() - reported >= PROGRESS_EVERY_S
        evaluating = evaluate and train.eval_every and (step + 1) % train.eval_every == 0 and step + 1 < steps
        if len(pending) >= read_every or report or evaluating or step + 1 == steps:
            read_losses()
            if result.diverged_at_step is not None:
                break
        if report:
            reported = time.monotonic()
            progress({"steps": result.steps, "last_loss": result.losses[-1], "elapsed_s": reported - began})
        if evaluating:
            score = evaluate()
            model.train()
            result.evals.append({"step": step + 1, "score": score})
            curve.evaluation(step + 1, score)
            read_at = time.monotonic()
            if train.keep_best and score is not None and (
                    best is None or (score > best if higher_is_better else score < best)):
                best, result.best_step = score, step + 1
                best_state = {id(p): p.detach().clone() for p in params}
    bar.close()
    curve.close()
    source.close()  # here, not whenever the collector finds it
    result.step_s = clock.seconds()
    result.train_s = sum(result.step_s)
    if best_state is not None and result.diverged_at_step is None:  # the end of training against the best checkpoint
        final = evaluate()
        result.evals.append({"step": steps, "score": final})
        curve.evaluation(steps, final)
        if final is None or (final < best if higher_is_better else final > best):
            with torch.no_grad():
                for p in params:
                    p.copy_(best_state[id(p)])
        else:
            result.best_step = steps
    return result
