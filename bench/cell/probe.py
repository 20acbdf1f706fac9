"""The instrumented step: one forward and backward that measures what training holds beside the weights.

A cell runs it once before training, on the probe batch: the rows of the first training batch,
padded to the longest example of the training set, which is the largest shape any training step
can have. It does not touch training: the random number generators are restored afterwards, its
gradients are dropped, the optimizer does not exist yet, and its time counts in no figure.
`peft-bench estimate` runs the same step on fake tensors (bench/tools/fake_pass.py).

What it measures (memory.activation_bytes, grad_bytes, step_peak_bytes and the counted FLOPs) is
defined once, in the figure registry (bench/figures.py; docs/measurement.md writes it out).
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import weakref
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.cell.batching import batches, positions_in, to_device, tokens_in
from bench.cell.objectives import lm_loss
from bench.models import is_encoder_decoder
from bench.tensors import constant_fake, storage_key, tensor_bytes

_aten = torch.ops.aten


def _query_heads(shape, heads: int) -> tuple:
    """A key or value shape given the query's head count. Under grouped-query attention (LLaMA-2-70B, Mistral,
    TinyLlama) a fused kernel gets fewer key/value heads than query heads and computes the products of the
    repeated heads; torch's own formulas count them so from 2.13, and before that raise on such shapes."""
    return (shape[0], heads, *shape[2:])


def _attention_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, _query_heads(k, q[1]), _query_heads(v, q[1]))


def _attention_backward_flops(g, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(g, q, _query_heads(k, q[1]), _query_heads(v, q[1]))


def _ops(*names: str) -> list:
    return [getattr(_aten, name) for name in names if hasattr(_aten, name)]  # cudnn's arrived in torch 2.5


# Every fused attention kernel (each takes query, key, value first; a backward takes the output's gradient before
# them), counted the same way on every torch (>= 2.4) and device. PyTorch's table misses CPU flash attention.
ATTENTION_FLOPS = {
    **dict.fromkeys(_ops("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"),
                    _attention_flops),
    **dict.fromkeys(_ops("_scaled_dot_product_flash_attention_for_cpu_backward",
                         "_scaled_dot_product_flash_attention_backward",
                         "_scaled_dot_product_efficient_attention_backward",
                         "_scaled_dot_product_cudnn_attention_backward"), _attention_backward_flops),
}


def _gemm_4bit_flops(a_shape, b_shape, shape_b, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(a_shape) * shape_b[0]  # A [..., K] times the [N, K] weight: a linear layer's 2 M K N


def custom_flops() -> dict:
    """The formulas the probe and evaluation's count add to FlopCounterMode's table: ATTENTION_FLOPS, and where
    bitsandbytes is imported (QLoRA) its 4-bit matrix product, one operator (`gemm_4bit`, which dequantises the weight
    inside, on a GPU or its CPU backend) counted as the linear layer it computes; the dequantisation, elementwise,
    counts nothing, as no elementwise work does. An older bitsandbytes without that operator multiplies with
    F.linear, which the table counts already."""
    formulas = dict(ATTENTION_FLOPS)
    if sys.modules.get("bitsandbytes") is not None:
        gemm_4bit = getattr(torch.ops.bitsandbytes, "gemm_4bit", None)
        if gemm_4bit is not None:
            formulas[gemm_4bit] = _gemm_4bit_flops
    return formulas


@dataclass
class StepMeasure:
    activation_bytes: int
    grad_bytes: int
    live_peaks: dict  # LiveBytes.peaks over forward and backward: by phase (one, `()`, in a cell)
    batch_bytes: int
    forward_flops: int
    backward_flops: int
    rows: int  # examples in the batch
    positions: int  # padded positions computed on (bench.cell.batching.positions_in)
    tokens: int  # non-padding tokens (bench.cell.batching.tokens_in)


# The most bytes the step holds at once in the tensors it creates (memory.step_peak_bytes). Saved
# activations and gradients are two parts of it; the peak is what is alive together at the busiest
# moment, which neither sum tells: the forward pass's transients that nothing saves (a frozen layer's
# intermediate), gradients appearing while backward frees activations. A dispatch mode sees every
# operator's outputs: a storage that none of the operator's inputs has is new, and a finalizer on it says
# when it is freed. It cannot see allocations inside a kernel that do not outlive it, nor the allocator's
# rounding and caching (docs/measurement.md, "Predicted vs measured").


def tensors_in(tree) -> list[torch.Tensor]:
    """The tensors among a nested structure's leaves (an operator's arguments, a module's output)."""
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


class LiveBytes(TorchDispatchMode):
    """Within the block: `peaks[phase]`, the most bytes held at once by the storages that operators
    created inside it, sampled after every operator, by the `phase()` the work was in at the time
    (one phase, `()`, unless the caller tells phases apart: the estimate's depth extrapolation).

    Storages that existed before the block (weights, buffers, the batch) never count, nor do views
    and in-place results of an operator's inputs. `current` is what is still alive.
    """

    def __init__(self, phase: Callable[[], Hashable] = tuple):
        super().__init__()
        self.phase = phase
        self.peaks: dict[Hashable, int] = {}
        self.current = 0
        self._sizes: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    def _freed(self, key: int) -> None:
        self.current -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is _aten.lift_fresh.default:  # torch.tensor(data): made outside any operator, as the batch is; on
            return out  # fake tensors its fake is a new storage, on real ones the very one (a step's scalars)
        inputs = {storage_key(t) for t in tensors_in((args, kwargs))}
        for t in tensors_in(out):
            key = storage_key(t)
            if key not in self._sizes and key not in inputs:
                storage = t.untyped_storage()
                self._sizes[key] = storage.nbytes()
                self.current += self._sizes[key]
                self._finalizers.append(weakref.finalize(storage, self._freed, key))
        phase = self.phase()
        if self.current > self.peaks.get(phase, -1):
            self.peaks[phase] = self.current
        return out

    def __exit__(self, *exc):
        for finalizer in self._finalizers:  # what outlives the block (gradients) is no longer followed
            finalizer.detach()
        self._finalizers.clear()
        return super().__exit__(*exc)


class StepCounters(LiveBytes):
    """LiveBytes, and within the same block the step's two other counts, taken without holding a tensor:

    - `flops`: FLOPs by FlopCounterMode's formula table (`torch.utils.flop_counter`, as registered when the
      block is made, with custom_flops: every fused attention kernel, bitsandbytes' 4-bit product), per operator
      as it runs.
      FlopCounterMode also decomposes operators that have no formula; under autograd, as in a training step,
      composite operators are decomposed before any mode sees them, and what is left to it (inference mode,
      higher-order operators, Python decompositions of elementwise kernels) is not a training step's matrix products:
      tests/test_probe.py checks the totals against FlopCounterMode;
    - `saved`: the storages autograd saves for backward, each once (`saved_bytes_without` leaves out
      the model's own weights, asked afterwards).

    The FLOP counter runs no module tracker and the saved-tensor hook keeps no reference: both would
    keep tensors that a plain step frees (peft's DoRA builds side graphs that die at once), and the
    live bytes would no longer be a plain step's. The hook hands autograd a detached alias, since the
    tensor itself would tie a saved output to its own node in a cycle that only the garbage collector
    frees. A saved storage leaves the seen set when it is freed, so a later storage at the same address
    is counted as the new one it is. (Under a saved-tensor hook autograd does not check a saved tensor's
    version: a method that modifies one in place fails at its first training step, not here.)
    """

    def __init__(self, phase: Callable[[], Hashable] = tuple):
        super().__init__(phase)
        self.flops = 0
        self._formulas = {**flop_counter.flop_registry,
                          **{op: flop_counter.shape_wrapper(f) for op, f in custom_flops().items()}}
        self.saved: list[tuple[int, int]] = []  # (storage key, bytes) of every storage saved in the block
        self._saved_alive: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in self._saved_alive:
            storage = t.untyped_storage()
            self._saved_alive.add(key)
            self.saved.append((key, storage.nbytes()))
            self._finalizers.append(weakref.finalize(storage, self._saved_alive.discard, key))
        return t.detach()

    def saved_bytes_without(self, tensors) -> list[int]:
        """Bytes of each saved storage that is not one of `tensors`' (the parameters and buffers)."""
        own = {storage_key(t) for t in tensors}
        return [size for key, size in self.saved if key not in own]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        formula = self._formulas.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **(kwargs or {}), out_val=out)
        return out

    def __enter__(self):
        self._hooks.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._hooks.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._hooks.__exit__(*exc)


def instrumented_step(model: torch.nn.Module, batch: dict, autocast=contextlib.nullcontext,
                      fake_mode=None, loss_fn=lm_loss, encoder_decoder: bool | None = None,
                      phase=tuple) -> StepMeasure:
    """One forward and backward pass of `model` on `batch`, followed by StepCounters: the live bytes (by
    `phase()`), the FLOPs of each pass, the saved storages and the gradients. The garbage collector waits
    until the end, so that what reference cycles hold is freed at the same moment on every run; no collection runs
    before (earlier garbage holds no storage the pass makes, and a full collection costs ~0.3 s in a test process).

    With a `fake_mode` (the estimate's FakeTensorMode, the model's tensors already fake in it) the
    step runs on fake tensors: the batch is converted, keeping its values, after its token counts are read, a draw
    of one random number is made for real (_ScalarDraws), and torch.distributions' argument checks are off
    (_unchecked_distributions).
    Backward runs only when something requires a gradient. `encoder_decoder` is the model's kind if the caller
    knows it.
    """
    if encoder_decoder is None:
        encoder_decoder = is_encoder_decoder(model)
    rows, positions = batch["input_ids"].shape[0], positions_in(batch, encoder_decoder)
    tokens = tokens_in(batch, encoder_decoder)
    if fake_mode is not None:  # constants: a forward that reads the ids (T5's classifier) reads them as on real ones
        batch = {k: constant_fake(fake_mode, lambda v=v: v) for k, v in batch.items()}
    tensors = [*model.parameters(), *model.buffers()]
    enabled = gc.isenabled()
    gc.disable()
    try:
        with (fake_mode or contextlib.nullcontext()), \
                (_ScalarDraws(fake_mode) if fake_mode is not None else contextlib.nullcontext()), \
                (_unchecked_distributions() if fake_mode is not None else contextlib.nullcontext()), \
                StepCounters(phase) as counters:
            with autocast():
                loss = loss_fn(model, batch)
            forward_flops = counters.flops
            if loss.requires_grad:
                loss.backward()
    finally:
        if enabled:
            gc.enable()
    return StepMeasure(
        activation_bytes=sum(counters.saved_bytes_without(tensors)),
        grad_bytes=tensor_bytes(t.grad for t in tensors if t.grad is not None),
        live_peaks=counters.peaks, batch_bytes=tensor_bytes(batch.values()),
        forward_flops=forward_flops, backward_flops=counters.flops - forward_flops,
        rows=rows, positions=positions, tokens=tokens)


class _ScalarDraws(TorchDispatchMode):
    """On the fake pass, a random draw of at most one element is made for real, from a generator seeded alike on
    every pass, and handed over as a fake that keeps its value: a forward that branches on one (peft's LoHa and LoKr
    apply their adapter when `torch.rand(1) > module_dropout`) then runs as on real tensors, where a plain fake, whose
    value is unknown, would stop it. Larger draws stay fake: what they fill is computed with, never read."""

    DRAWS = {torch.ops.aten.rand.default: torch.rand, torch.ops.aten.randn.default: torch.randn,
             torch.ops.aten.randint.default: torch.randint, torch.ops.aten.randint.low: torch.randint}

    def __init__(self, fake_mode):
        super().__init__()
        self.fake_mode, self.generator = fake_mode, torch.Generator().manual_seed(0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.DRAWS and torch.Size(args[-1]).numel() <= 1:  # on the CPU, the device the fakes claim
            settings = {k: v for k, v in kwargs.items() if k not in ("device", "pin_memory")}
            return constant_fake(self.fake_mode,
                                 lambda: self.DRAWS[func](*args, generator=self.generator, **settings))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _unchecked_distributions():
    """torch.distributions' argument checks off within the block: a random draw's distribution (the relaxed
    Bernoulli of peft's Poly router) checks its parameters' values, which fake tensors lack, and the check keeps
    and counts nothing. Set, not left to chance: torch._dynamo, once imported, turns them off for good."""
    from torch.distributions import Distribution

    checked = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(checked)


def first_step(model: torch.nn.Module, features: list[dict], batch_size: int, seed: int, objective, device,
               autocast) -> StepMeasure:
    """The cell's probe: measure_step on the probe batch of its training features (a cell's one call here), after
    a full collection: what setup's and the evaluation probe's reference cycles hold is freed before the probe warms
    up what training runs with, so the training window's peaks do not count it."""
    gc.collect()
    encoder_decoder = is_encoder_decoder(model)
    batch = to_device(probe_batch(features, batch_size, seed, objective.collate), device)
    return measure_step(model, batch, device, autocast, objective.loss, encoder_decoder)


def measure_step(model: torch.nn.Module, batch: dict, device, autocast, loss_fn=lm_loss,
                 encoder_decoder: bool | None = None) -> StepMeasure:
    """instrumented_step in training mode, leaving no trace: RNG state restored, gradients dropped."""
    cuda = torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []):
        model.train()
        step = instrumented_step(model, batch, autocast=autocast, loss_fn=loss_fn, encoder_decoder=encoder_decoder)
    for p in model.parameters():
        p.grad = None
    return step


def probe_batch(features: list[dict], batch_size: int, seed: int, collate_fn) -> dict[str, torch.Tensor]:
    """The rows of the first training batch, padded to the training set's longest input (and target).

    `collate_fn` is the training objective's; for the LM objective, a row is a sequence.
    """
    rows = next(batches(features, batch_size, seed))
    longest = [max(features, key=lambda f: len(f["input_ids"]))]
    if isinstance(features[0].get("labels"), list):
        longest.append(max(features, key=lambda f: len(f["labels"])))
    batch = collate_fn(rows + longest)
    n = batch["input_ids"].shape[0] - collate_fn(longest)["input_ids"].shape[0]
    return {k: v[:n] for k, v in batch.items()}


def step_peak_bytes(step: StepMeasure, update_bytes: int) -> int:
    """memory.step_peak_bytes: the batch, and the busier of forward and backward (the most bytes alive at
    once, LiveBytes) and the optimizer update (every gradient beside `update_bytes` of temporaries)."""
    return step.batch_bytes + max(max(step.live_peaks.values(), default=0), step.grad_bytes + update_bytes)


# T-Few's cost model (Liu et al. 2022): FLOPs per token are (inference, training) × N, N the
# parameter count. An encoder-decoder token passes through about half the parameters (encoder or
# decoder), so N and 3N; decoder-only: 2N and 6N. Encoder-only models: every token passes through
# all parameters, as in a decoder, so 2N and 6N too.
COST_MODEL = {"encoder-decoder": (1, 3), "decoder": (2, 6), "encoder": (2, 6)}


def forward_flops_per_example(step: StepMeasure, n_params: int, kind: str) -> dict:
    """The estimate's per-example forward cost (no evaluation runs there): the step's forward FLOPs /
    its rows, and the cost model's inference factor × N × its non-padding tokens / its rows."""
    return {"forward_per_example": step.forward_flops // step.rows,
            "cost_model_forward_per_example": COST_MODEL[kind][0] * n_params * step.tokens // step.rows}


def inference_flops(bundle, model, evalset, task, device, autocast, n_params: int, n: int = 8) -> dict:
    """flops.inference_per_example: FLOPs counted while predicting the first `n` evaluation examples
    the way evaluation predicts them (the forward pass of a classifier, every answer option of rank
    classification, the whole decoding loop of generation), divided by their number; in-context
    demonstrations and soft prompts are part of what is counted. cost_model_inference_per_example:
    the cost model's factor × N × the tokens of those examples (prompt; for rank classification prompt + option
    for each option on a decoder, the prompt once plus every option on an encoder-decoder; plus the first reference
    of generation) / their number."""
    from bench.cell.evaluate import predict

    sample = evalset.rows(0, n)
    rows = len(sample.features)
    cuda = torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []), \
            flop_counter.FlopCounterMode(display=False, custom_mapping=custom_flops()) as counter:
        predict(bundle, model, sample, task, rows, device, autocast)
    prompts = [len(f["input_ids"]) for f in sample.features]
    if sample.choices is not None:  # an encoder-decoder reads each prompt once (evaluate.encodes_once)
        repeats = (lambda opts: 1) if bundle.kind == "encoder-decoder" else len
        tokens = sum(p * repeats(opts) + sum(map(len, opts)) for p, opts in zip(prompts, sample.choices))
    elif bundle.head == "lm":
        tokens = sum(prompts) + sum(len(bundle.tokenizer(refs[0])["input_ids"]) for refs in sample.gold)
    else:
        tokens = sum(prompts)
    return {"inference_per_example": counter.get_total_flops() // rows,
            "cost_model_inference_per_example": COST_MODEL[bundle.kind][0] * n_params * tokens // rows}


def training_flops(step: StepMeasure, n_params: int, kind: str, positions: int, tokens: int) -> dict:
    """flops.train_total: the probe's forward + backward FLOPs per padded position × the padded
    positions trained (linear in length, so attention's L² term makes it an upper bound), and the
    cost model's figure: training factor × N × non-padding tokens trained."""
    per_position = (step.forward_flops + step.backward_flops) / step.positions
    return {"train_total": round(per_position * positions),
            "cost_model_train_total": COST_MODEL[kind][1] * n_params * tokens}
