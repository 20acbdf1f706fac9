"""The training step of `peft-bench estimate` on fake tensors, at a model's full depth from a few of its blocks.

bench.cell.probe's instrumented step runs on fake tensors (torch's FakeTensorMode): every operator computes shapes
and dtypes only, so the storages saved for backward, the gradients, the bytes alive at once and the FLOPs are those
of a real step, at no memory cost. The batch is B rows of exactly L tokens with no padding (without a mask the
models skip building one); encoders are given class labels, the others their own tokens as labels, but where the
caller gives the batch (`batch_for`: a cell's task's, bench/tools/priced_task.py).

Fake tensors claim the CPU device, so operators are chosen as on a CPU: sdpa attention uses PyTorch's flash kernel
for CPU where its inputs allow (no dropout), which, like CUDA's flash and memory-efficient kernels, saves its output
and log-sum-exp rather than the L×L probabilities; otherwise its math kernel, which saves them. The step of a cell
on a GPU is modelled on them (`device` "cuda": bench/tools/cuda_step.py): sdpa as CUDA's fused kernels run it, and
the forward under bf16 autocast with CUDA's lists of what runs in bf16 and what in fp32.

A Transformer's blocks after the first of a stack are identical, so the step is run on the model cut to a few
blocks per stack and extended to the full depth (fake_step): a 70B model costs a few blocks' passes, not 80.
bench/tools/estimate.py builds the adapted model on the meta device and turns this step into the estimate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from functools import partial

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_leaves

from bench.cell.probe import StepMeasure, instrumented_step, tensors_in
from bench.tensors import constant_fake
from bench.tools.cuda_step import step_on
from bench.tools.priced_task import default_head, fake_batch

EXTRAPOLATE_FROM = 2  # blocks kept per stack; the first block of a stack may differ (T5's position bias)
_LINEAR_FIELDS = ("activation_bytes", "grad_bytes", "forward_flops", "backward_flops")


@contextlib.contextmanager
def _fake_weights(model: torch.nn.Module, mode):
    """Every parameter and buffer of the meta `model` replaced by a fake CPU tensor within the block
    (one fake per tensor, so tied weights stay tied)."""
    fakes, originals = {}, []
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None:
                    if id(t) not in fakes:
                        fake = mode.fake_tensor_converter.from_meta_and_device(mode, t, torch.device("cpu"))
                        fakes[id(t)] = torch.nn.Parameter(fake, t.requires_grad) if table is module._parameters \
                            else fake
                    originals.append((table, name, t))
                    table[name] = fakes[id(t)]
    try:
        yield
    finally:
        for table, name, t in originals:
            table[name] = t


# What a forward reads the values of are the batch's masks and positions, a few positions longer (a prepended
# column, a soft prompt's virtual tokens) and gathered to more rows (an encoder-decoder's prompts to their options):
# 2.7 times the batch's largest tensor on tiny-t5's soft-prompted copa batch. An attention mask built from them is
# L times the batch: at a real length it stays fake, never computed on this machine's CPU.
VALUES_PER_BATCH_ELEMENT = 16
_RANGES = {torch.ops.aten.arange.default: lambda end, **_: (0, end, 1),
           torch.ops.aten.arange.start: lambda start, end, **_: (start, end, 1),
           torch.ops.aten.arange.start_step: lambda start, end, step=1, **_: (start, end, step)}
_FILLS = {torch.ops.aten.ones.default, torch.ops.aten.zeros.default, torch.ops.aten.full.default}  # shape first


def _numbers_made(func, args, kwargs) -> int | None:
    """How many numbers `func` makes from numbers alone, with no tensor in: a range, or a tensor of ones, zeros or
    one value; None for any other operator."""
    if str(kwargs.get("device", "cpu")) == "meta":
        return None
    if func in _RANGES:
        start, end, step = _RANGES[func](*args, **kwargs)
        return math.ceil((end - start) / step)
    return math.prod(args[0]) if func in _FILLS else None


class _BatchValues(FakeTensorMode):
    """The fake pass's mode: the batch comes in with its values (bench.cell.probe.instrumented_step), and what is
    computed from values alone keeps them, as does what is made from numbers alone (_numbers_made: the positions a
    model counts its tokens by, the ones of a soft prompt's attention mask), where torch's fake mode keeps
    one-element results only: up to VALUES_PER_BATCH_ELEMENT times the batch's largest tensor's size. A forward that
    reads its token ids then runs as on real tensors: T5's classifier checks that every row has as many
    end-of-sequence tokens (`unique_consecutive`, whose output shape is its input's values) and takes each row's last
    one (a boolean mask); transformers' attention masks read the padding mask and the positions (_read_values).
    Nothing the model's weights enter has values. A result's storage is as large as the real kernel left it
    (`unique_consecutive` keeps room for its whole input), so the bytes alive are a real step's. Accepts tensors a
    method keeps outside its module tree (real ones)."""

    def __init__(self, largest: int):
        super().__init__(allow_non_fake_inputs=True)
        self.largest = VALUES_PER_BATCH_ELEMENT * largest

    def may_turn_const(self, t: torch.Tensor) -> bool:
        return t.numel() <= self.largest and t.layout == torch.strided and not self.is_our_fake(t) \
            and t.device.type != "meta"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        made = _numbers_made(func, args, kwargs)
        if made is not None and made <= self.largest:  # the fakes claim the CPU: made there
            settings = {k: v for k, v in kwargs.items() if k not in ("device", "pin_memory")}
            return constant_fake(self, lambda: func(*args, **settings))
        out = super().__torch_dispatch__(func, types, args, kwargs)
        for t in tree_leaves(out):
            if getattr(t, "constant", None) is not None:
                real = t.constant.untyped_storage().nbytes()
                if real > t.untyped_storage().nbytes():
                    t.untyped_storage().resize_(real)
        return out


@contextlib.contextmanager
def _read_values():
    """transformers' attention masks made as on real tensors within the block. Whether an SDPA forward may skip
    its mask for the kernel's own causal one depends on values: that the padding mask is all ones, and (with no
    mask and no cache: a forward with use_cache=False, as token_logprobs runs) that the positions hold one sequence
    per row, not several packed ones. transformers does not read them from a fake tensor (`is_tracing`: it might
    be compiled) and builds the [rows, 1, L, L] mask, which the attention kernel then saves for backward, where the
    real step, on a CPU as on a GPU, skips it. A fake that holds its values (_BatchValues) is read as a real one."""
    from transformers import masking_utils

    def is_tracing(tensor=None) -> bool:
        return traced(None if getattr(tensor, "constant", None) is not None else tensor)

    traced = masking_utils.is_tracing
    masking_utils.is_tracing = is_tracing
    try:
        yield
    finally:
        masking_utils.is_tracing = traced


def _fake_pass(model: torch.nn.Module, kind: str, batch_size: int, seq_len: int, phase=tuple,
               batch_for=None, device: str = "cpu", autocast: bool = False, training: bool = True) -> StepMeasure:
    """The step on fake tensors; `batch_for(batch_size, seq_len)`: its (batch, loss), by default a model's of
    `kind` without a task (bench/tools/priced_task.fake_batch); as on `device` (cpu, or cuda: its fused attention
    kernels), its forward under bf16 autocast with `autocast`, as a cell's (bench/tools/cuda_step.py); in eval mode
    where not `training` (no dropout: the passes that score weights before training, bench/methods/fisher.py)."""
    model.train(training)
    batch, loss = (batch_for or partial(fake_batch, default_head(kind), None))(batch_size, seq_len)
    mode = _BatchValues(max(t.numel() for t in batch.values()))
    with _fake_weights(model, mode), _read_values(), step_on(device, autocast) as region:
        return instrumented_step(model, batch, autocast=region, fake_mode=mode, phase=phase, loss_fn=loss)


def fake_eval(model: torch.nn.Module, batch: dict, way: str, device: str = "cpu", autocast: bool = False,
              generation: dict | None = None, eos=None) -> int:
    """memory.eval_peak_bytes of the evaluation's forward (`way`, bench/cell/eval_probe.py) on `batch`, on fake
    tensors as on `device` (its attention kernels; bf16 autocast with `autocast`), at the model's full depth: a
    forward without gradients keeps nothing per block but what the model returns (a decoder's key-value cache),
    and one pass costs little. Generation's (eval_probe.generation_bound) with the task's `generation` settings and
    the end-of-sequence id or ids `eos`."""
    from bench.cell.eval_probe import GENERATE, eval_peak, generation_bound

    mode = _BatchValues(max(t.numel() for t in batch.values()))
    with _fake_weights(model, mode), _read_values(), step_on(device, autocast) as region:
        if way == GENERATE:
            return generation_bound(model, batch, generation, eos, autocast=region, fake_mode=mode)
        return eval_peak(model, batch, way, autocast=region, fake_mode=mode)


def _signature(block: torch.nn.Module) -> tuple:
    return tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in block.named_parameters())


def block_stacks(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.ModuleList]]:
    """The model's stacks of repeated blocks (parent, name, list): ModuleLists of at least
    EXTRAPOLATE_FROM + 2 modules of one class whose blocks after the first have identical parameters
    (names, shapes, dtypes, trainability), i.e. the layers of a Transformer's encoder or decoder as a
    method left them. A method adapting only some layers leaves no such stack."""
    stacks = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) >= EXTRAPOLATE_FROM + 2 \
                    and len({type(block) for block in child}) == 1 \
                    and len({_signature(block) for block in list(child)[1:]}) == 1:
                stacks.append((parent, name, child))
    return stacks


@contextlib.contextmanager
def _truncated(stacks, depths: list[int]):
    """The stacks cut to their first `depths` blocks for the duration of the block."""
    for (parent, name, blocks), depth in zip(stacks, depths):
        parent._modules[name] = torch.nn.ModuleList(list(blocks)[:depth])
    try:
        yield
    finally:
        for parent, name, blocks in stacks:
            parent._modules[name] = blocks


# The depth extrapolation's account of the bytes alive at once. The blocks of a stack after its first
# are identical; the full model is the cut one with more of them. Where the step is with respect to
# one of them, the "marker" (StackPhases), tells what each further block holds at that moment: nothing
# yet (BEFORE its forward), its saved activations (ACTIVATIONS: from its forward until its backward
# begins), what it leaves once its backward is done, its gradients and the gradients it sends to
# tensors computed before the stack (GRADIENTS), and while the blocks run backward one after another,
# the larger of the two (EITHER: the first holds one, the last the other). How much a further block
# adds in each phase is read off the deeper pass, where the block after the marker ("high", the last)
# is a second copy (its ACTIVATIONS and EITHER phases have the marker's block in forward-done state),
# as is the one before ("low", the marker itself: in its EITHER and GRADIENTS phases the copy above it
# is done). tests/test_estimate.py checks the result against full-depth passes.
BEFORE, ACTIVATIONS, EITHER, GRADIENTS = range(4)


class StackPhases:
    """Within the block, `()` is the phase (above) of the step at each marker, a flat tuple: module hooks
    on a marker's forward, tensor hooks on its output's gradient (its backward begins) and on its input's
    (its backward ends). Hooks change nothing the step computes or keeps."""

    def __init__(self, markers: list[torch.nn.Module]):
        self.markers, self.state = markers, [BEFORE] * len(markers)
        self._handles = []

    def __call__(self) -> tuple:
        return tuple(self.state)

    def _set(self, i: int, phase: int):
        def hook(*_):
            self.state[i] = phase
        return hook

    def _watch(self, i: int):
        def pre_hook(module, args, kwargs):
            self.state[i] = ACTIVATIONS
            hidden = args[0] if args else kwargs.get("hidden_states")
            if torch.is_tensor(hidden) and hidden.requires_grad:
                hidden.register_hook(self._set(i, GRADIENTS))

        def hook(module, args, kwargs, output):
            out = next((t for t in tensors_in(output) if t.requires_grad), None)
            if out is not None:
                out.register_hook(self._set(i, EITHER))
        return pre_hook, hook

    def __enter__(self):
        for i, marker in enumerate(self.markers):
            pre_hook, hook = self._watch(i)
            self._handles += [marker.register_forward_pre_hook(pre_hook, with_kwargs=True),
                              marker.register_forward_hook(hook, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False


def _added_by_a_block(base: StepMeasure, deeper: StepMeasure, stack: int, key: tuple) -> dict[int, int]:
    """What one more block of `stack` adds to the most bytes alive at once in the base pass's phase `key`
    (markers low and high of each stack, equal in the base pass), read off the deeper pass: as a block
    whose forward is done (at ACTIVATIONS) and as a block whose backward is done (at GRADIENTS), where
    the phase has them (EITHER has both)."""
    def most(high: bool) -> int:
        others = key[:2 * stack] + key[2 * stack + 2:]
        return max((v for k, v in deeper.live_peaks.items()
                    if k[2 * stack + high] == key[2 * stack] and k[:2 * stack] + k[2 * stack + 2:] == others),
                   default=base.live_peaks[key])
    phase = key[2 * stack]
    added = {}
    if phase in (ACTIVATIONS, EITHER):
        added[ACTIVATIONS] = most(high=True) - base.live_peaks[key]
    if phase in (EITHER, GRADIENTS):
        added[GRADIENTS] = most(high=False) - base.live_peaks[key]
    return added


def _consistent(base: StepMeasure, deeper: StepMeasure, stack: int) -> bool:
    """Whether a block whose backward is done adds the same in EITHER as in GRADIENTS (the rest of the step
    in the same phase): if not, work outside the stack runs between its blocks' backward passes."""
    done = {}
    for key in base.live_peaks:
        if key[2 * stack] in (EITHER, GRADIENTS):
            others = key[:2 * stack] + key[2 * stack + 2:]
            done.setdefault(others, set()).add(_added_by_a_block(base, deeper, stack, key)[GRADIENTS])
    return all(len(values) == 1 for values in done.values())


def _extended_peak(base: StepMeasure, deepers: list[tuple[int, StepMeasure]]) -> int:
    """The most bytes alive at once with `more` further blocks in each stack (`deepers`: (more, its deeper pass))."""
    return max(value + sum(more * max(_added_by_a_block(base, deeper, i, key).values(), default=0)
                           for i, (more, deeper) in enumerate(deepers))
               for key, value in base.live_peaks.items())


def fake_step(model: torch.nn.Module, kind: str, batch_size: int, seq_len: int,
              extrapolate: bool = True, flops_only: bool = False, batch_for=None, device: str = "cpu",
              autocast: bool = False, training: bool = True) -> StepMeasure:
    """The instrumented step on fake tensors, at the model's full depth.

    Blocks of a stack are identical, so each adds the same saved bytes, gradients and FLOPs: the step
    is run with every stack cut to EXTRAPOLATE_FROM blocks, then once per stack with one block more,
    and each figure is extended linearly to the full depth; the most bytes alive at once, phase by
    phase (StackPhases). That account holds where the work outside a stack does not run between its
    blocks' backward passes; it does not, for instance, where a prefix computed before the stack is
    sliced block by block. What guards it: a finished block must add the same in the EITHER and the
    GRADIENTS phases (_consistent; this also turns away some accounts that hold, e.g. most of T5's),
    and, a weaker check, a pass with two blocks more must give the figure the account gives it. Where
    either fails, the step is run at full depth instead. A 70B model thus costs a few blocks' passes,
    not 80; tests check the result and the path taken against full passes (extrapolate=False).

    `flops_only`: only the FLOPs (and the other linear figures) are wanted, as `run --dry-run` prices cells:
    see _linear_figures. The bytes alive at once are then left unaccounted (`live_peaks` empty), and the step runs
    without autocast, which changes what is saved, not the products (a device's attention kernels change both).
    `batch_for`: the step's batch and loss; `device` and `autocast`: whose step, in which precision; `training`: the
    model's mode (_fake_pass).
    """
    stacks = block_stacks(model) if extrapolate else []
    if flops_only:
        return _linear_figures(model, kind, batch_size, seq_len, stacks, batch_for, device, training)
    base_depths = [EXTRAPOLATE_FROM] * len(stacks)

    def run(stack: int | None = None, more: int = 0) -> StepMeasure:
        depths = [d + more * (i == stack) for i, d in enumerate(base_depths)]
        markers = [block for (_, _, blocks), d in zip(stacks, depths) for block in (blocks[1], blocks[d - 1])]
        with _truncated(stacks, depths), StackPhases(markers) as phases:
            return _fake_pass(model, kind, batch_size, seq_len, phases, batch_for, device, autocast, training)

    base = run()
    result, deepers = dataclasses.replace(base), []
    for i, (_, _, blocks) in enumerate(stacks):
        deeper, more = run(i, 1), len(blocks) - EXTRAPOLATE_FROM
        for field in _LINEAR_FIELDS:
            setattr(result, field, getattr(result, field) + more * (getattr(deeper, field) - getattr(base, field)))
        two_more = [(2 * (j == i), deeper if j == i else base) for j in range(len(stacks))]
        if not _consistent(base, deeper, i) or \
                more > 2 and _extended_peak(base, two_more) != max(run(i, 2).live_peaks.values()):
            return fake_step(model, kind, batch_size, seq_len, extrapolate=False, batch_for=batch_for,
                             device=device, autocast=autocast, training=training)
        deepers.append((more, deeper))
    result.live_peaks = {(): _extended_peak(base, deepers)}
    return result


def _linear_figures(model: torch.nn.Module, kind: str, batch_size: int, seq_len: int, stacks,
                    batch_for=None, device: str = "cpu", training: bool = True) -> StepMeasure:
    """fake_step's linear figures (FLOPs, saved and gradient bytes) in the fewest and shortest passes. A block adds
    the same FLOPs whatever the step's memory holds at that moment, so no phase needs checking, and a stack's
    first block (which may differ: T5's position bias) is kept alone: the step with one block per stack, then
    with two in the stacks of one length at a time (T5's encoder and decoder together), each second block
    counted once per further block. Exact where fake_step's are (tests/test_estimate.py)."""
    def run(depths: list[int]) -> StepMeasure:
        with _truncated(stacks, depths):
            return _fake_pass(model, kind, batch_size, seq_len, batch_for=batch_for, device=device, training=training)

    base = run([1] * len(stacks))
    result = dataclasses.replace(base, live_peaks={})
    for length in sorted({len(blocks) for _, _, blocks in stacks}):
        deeper = run([2 if len(blocks) == length else 1 for _, _, blocks in stacks])
        for field in _LINEAR_FIELDS:
            added = getattr(deeper, field) - getattr(base, field)  # what the second block of these stacks adds
            setattr(result, field, getattr(result, field) + (length - 1) * added)
    return result
