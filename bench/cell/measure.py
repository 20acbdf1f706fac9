"""How the params and memory figures (and the utilisation of time) are measured.

What each figure means is declared once, in the figure registry (bench/figures.py), which
docs/measurement.md writes out; this module computes them: parameter counts and stored sizes, exact
byte sums of tensors, the peaks of the training window (PeakMemory), wall-clock timers and MFU.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
from pathlib import Path

import torch

from bench.cell.memory_trace import MemorySampler, allocator_bytes, rss_bytes
from bench.cell.sharded import whole
from bench.tensors import safetensors_size, tensor_bytes, unique_tensors


def head_elements(model: torch.nn.Module, head_modules) -> tuple[int, int]:
    """(all, trainable) parameter elements of a classifier's task head: every parameter with a head
    module's name in its path, so peft's trained copy of the head (modules_to_save) and the original it
    keeps count too. An LM-head model has no head modules: (0, 0)."""
    heads = set(head_modules)
    inside = [p for name, p in model.named_parameters() if heads & set(name.split("."))]
    return sum(p.numel() for p in inside), sum(p.numel() for p in inside if p.requires_grad)


def method_params(params: dict, head_trainable: int, body: int) -> dict:
    """params.method and params.method_pct: what the method trains outside the task head, as papers count
    a method, over the pretrained model's parameters without its head (`body`)."""
    method = params["trainable"] - head_trainable
    return {"method": method, "method_pct": 100.0 * method / body if body else None}


def weight_bytes(model: torch.nn.Module) -> dict:
    """memory.weights_bytes and memory.trainable_bytes of a model."""
    params = unique_tensors(model.parameters())
    return {"weights_bytes": tensor_bytes(params),
            "trainable_bytes": tensor_bytes(p for p in params if p.requires_grad)}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """memory.optimizer_bytes: every tensor in the optimizer's state (moments, step counters, ...)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


# What each phase of a cell holds at its busiest: a training step, and an evaluation batch (during training, beside
# the optimizer's state; a cell that trains nothing has none)
TRAINING_PARTS = ("weights_bytes", "optimizer_bytes", "step_peak_bytes")
EVALUATION_PARTS = ("weights_bytes", "optimizer_bytes", "eval_peak_bytes")


def predicted_peak(memory: dict, trains: bool, evaluates: bool = True) -> int | None:
    """memory.predicted_peak_bytes: the larger of the sums of TRAINING_PARTS (a cell that `trains`) and of
    EVALUATION_PARTS (a cell that `evaluates`: all but a pre-training stage; without the optimizer's state for one
    that does not train), null if a part of either is unknown, or if the cell runs neither."""
    evaluation = EVALUATION_PARTS if trains else ("weights_bytes", "eval_peak_bytes")
    phases = [TRAINING_PARTS] * trains + [evaluation] * evaluates
    sums = [[memory.get(k) for k in parts] for parts in phases]
    return None if not sums or any(p is None for parts in sums for p in parts) else max(sum(p) for p in sums)


def training_peak(memory: dict) -> int | None:
    """The training phase of memory.predicted_peak_bytes (the sum of TRAINING_PARTS, null if a part is): what a
    training window's measured peak (device_peak_allocated_bytes) is compared with."""
    return predicted_peak(memory, trains=True, evaluates=False)


def stored_size(state: dict[str, torch.Tensor]) -> dict:
    """Elements and safetensors bytes of the state a fine-tuned model must keep (a sharded cell's gathered whole)."""
    stored, stored_bytes = safetensors_size(state, whole)
    return {"stored": stored, "stored_bytes": stored_bytes}


_HWM = re.compile(r"VmHWM:\s+(\d+) kB")


def _peak_rss_bytes() -> int | None:
    try:
        return int(_HWM.search(Path("/proc/self/status").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def nvml_process_bytes(device: torch.device):
    """A function reading this process's device memory through NVML (CUDA context included), or
    None when NVML (the nvidia-ml-py distribution's pynvml module) or the device is not available.

    In a container the process may be listed under a host PID; if the device then lists exactly one
    compute process, that process is taken to be this one.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(device))
    except Exception:  # no module, no driver, no device: the figure stays null
        return None
    pid = os.getpid()

    def read() -> int | None:
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError:  # a failed reading is a missing one, never a crash of the cell
            return None
        mine = [p for p in procs if p.pid == pid] or (procs if len(procs) == 1 else [])
        return mine[0].usedGpuMemory if mine else None

    return read


PEAK_FIELDS = ("device_peak_allocated_bytes", "device_peak_reserved_bytes", "nvml_peak_bytes", "cpu_peak_rss_bytes")


class PeakMemory:
    """Peaks over a window (a `with` block); a figure that cannot be read stays null.

    device_peak_allocated_bytes  CUDA: torch.cuda.max_memory_allocated (tensors alive at once)
    device_peak_reserved_bytes   CUDA: torch.cuda.max_memory_reserved (what the caching allocator holds)
    nvml_peak_bytes              CUDA: the process's device memory as NVML reports it (CUDA context
                                 included), sampled every 50 ms and at both ends of the window
    cpu_peak_rss_bytes           the process's peak resident set (VmHWM after resetting it through
                                 /proc/self/clear_refs): interpreter, libraries and CPU tensors
    Work inside `excluded()` (evaluations during training) does not count towards the peaks.

    `trace`: the same sampling thread also reads the allocator's reserved and allocated bytes (CUDA) and the
    RSS (bench/cell/memory_trace.py), for `trace_figures`. It reads inside the window the peaks are reset for,
    so no reading exceeds the exact peak of its counter.
    """

    def __init__(self, device, trace: bool = False):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.figures: dict[str, int | None] = dict.fromkeys(PEAK_FIELDS)
        self._rss_reset = False
        read = _memory_reader(self.device, trace)
        self._sampler = MemorySampler(read) if read else None
        self.counters = ("reserved", "allocated", "nvml", "rss") if trace else ()

    @property
    def trace_figures(self) -> dict[str, int | None]:
        """memory.train_<counter>_{mean,p99,max}_bytes and train_memory_samples (bench/figures.py); NVML's
        maximum is nvml_peak_bytes."""
        out: dict[str, int | None] = {"train_memory_samples": self._sampler.instants if self.counters else None}
        for counter in self.counters:
            stats = self._sampler.summary(counter)
            out.update({f"train_{counter}_{stat}_bytes": value for stat, value in stats.items()
                        if not (counter == "nvml" and stat == "max")})
        return out

    @property
    def peak_bytes(self) -> int | None:
        """memory.peak_bytes: the allocated peak on CUDA, else the peak RSS (see `source`)."""
        return self.figures[self.source] if self.source else None

    @property
    def source(self) -> str | None:
        """memory.peak_source: which figure peak_bytes is."""
        if self.cuda:
            return "device_peak_allocated_bytes"
        return "cpu_peak_rss_bytes" if self._rss_reset else None

    def _start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss_reset = _reset_peak_rss()
        if self._sampler:
            self._sampler.start()

    def _fold(self) -> None:
        """Merge the peaks since the last start into the window's figures. The sampling thread stops first,
        whatever the rest raises (a CUDA error in synchronize), so it never outlives its window."""
        if self._sampler:
            self._sampler.stop()
        readings = {"nvml_peak_bytes": self._sampler.peak("nvml") if self._sampler else None}
        if self.cuda:
            torch.cuda.synchronize(self.device)
            readings["device_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            readings["device_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        if self._rss_reset:  # without a reset, VmHWM would include everything before the window
            readings["cpu_peak_rss_bytes"] = _peak_rss_bytes()
        for key, value in readings.items():
            if value is not None:
                old = self.figures[key]
                self.figures[key] = value if old is None else max(old, value)

    def __enter__(self):
        self._start()
        return self

    def __exit__(self, *exc):
        self._fold()
        return False

    @contextlib.contextmanager
    def excluded(self):
        self._fold()
        try:
            yield
        finally:
            self._start()


def _memory_reader(device: torch.device, trace: bool):
    """What PeakMemory's thread reads at each instant: NVML's bytes (CUDA, where pynvml imports); with `trace`,
    the allocator's reserved and allocated bytes (CUDA) and the RSS too (where no counter can be read, the
    instants are still counted). None without `trace` when there is nothing to read."""
    cuda = device.type == "cuda"
    readers = {"nvml": nvml_process_bytes(device) if cuda else None, "rss": rss_bytes if trace else None}
    readers = {counter: reader for counter, reader in readers.items() if reader}
    # the thread must read this device: a bare "cuda" would be the thread's own current device
    index = (torch.cuda.current_device() if device.index is None else device.index) if trace and cuda else None
    if not (readers or trace):
        return None

    def read() -> dict:
        values = {counter: reader() for counter, reader in readers.items()}
        return values if index is None else {**allocator_bytes(index), **values}

    return read


@contextlib.contextmanager
def timed(times: dict, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        times[key] = time.perf_counter() - start


# Dense (no sparsity) peak matrix throughput per GPU, FLOP/s, from the vendors' datasheets, by the
# dtype products run in: bf16 on tensor cores, fp32 without TF32 (torch's default for matmuls).
# The first entry whose key occurs in the device's name wins, so specific names come first.
PEAK_FLOPS = (  # dense (datasheets give bf16 with sparsity: twice these); a more specific name comes first
    ("H100 PCIe", {"bf16": 756e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835.5e12, "fp32": 60e12}),
    ("H200 NVL", {"bf16": 835.5e12, "fp32": 60e12}),
    ("H200", {"bf16": 989.4e12, "fp32": 66.9e12}),
    ("H100", {"bf16": 989.4e12, "fp32": 66.9e12}),
    ("A100", {"bf16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp32": 30.3e12}),
    ("RTX 4090", {"bf16": 165.2e12, "fp32": 82.6e12}),
)


def peak_flops(device_name: str | None, dtype: str) -> float | None:
    """The datasheet peak of a GPU for `dtype`, None for a CPU or a GPU not in PEAK_FLOPS."""
    for key, peaks in PEAK_FLOPS:
        if device_name and key in device_name:
            return peaks.get(dtype)
    return None


def utilisation(train_flops: int | None, train_s: float | None, device_name: str | None, dtype: str) -> dict:
    """time.train_flops_per_s = flops.train_total / time.train_s; time.mfu = that / the device's
    datasheet peak for the dtype products ran in (null where the peak is unknown, e.g. on a CPU)."""
    rate = train_flops / train_s if train_flops and train_s else None
    peak = peak_flops(device_name, dtype)
    return {"train_flops_per_s": rate, "mfu": rate / peak if rate is not None and peak else None}


def inference_speed(bundle, model, evalset, task, batch_size: int, device, autocast,
                    batched_s: float | None = None) -> dict:
    """time.infer_latency_s and time.infer_examples_per_s of `model` (bench/figures.py defines them).
    `batched_s`: the seconds the final evaluation took over the batched examples (TimedPrediction), so
    they are not predicted a second time; None times them here (the merged copy)."""
    from bench.cell.evaluate import predict, timed_examples
    from bench.figures import LATENCY_EXAMPLES

    def seconds(sample, size: int) -> float:
        watch = Stopwatch(device)
        predict(bundle, model, sample, task, size, device, autocast, clock=watch)
        return watch.seconds

    n = len(evalset.features)
    seconds(evalset.rows(0, 1), 1)  # warm-up: first-call allocations and kernel choices are not latency
    singles = [seconds(evalset.rows(i, i + 1), 1) for i in range(min(LATENCY_EXAMPLES, n))]
    batched = timed_examples(n, batch_size)
    if batched_s is None:  # those examples alone make the same batches as the evaluation's first group
        batched_s = seconds(evalset.rows(0, batched), batch_size)
    return {"infer_latency_s": statistics.median(singles), "infer_examples_per_s": batched / batched_s}


class Stopwatch:
    """`with stopwatch():` times the block into `seconds`, the device synchronised at both ends."""

    def __init__(self, device):
        self.device, self.seconds = device, None

    @contextlib.contextmanager
    def __call__(self):
        _synchronize(self.device)
        start = time.perf_counter()
        yield
        _synchronize(self.device)
        self.seconds = time.perf_counter() - start


class TimedPrediction:
    """The final evaluation's prediction of the main split, timing on the way the group of examples it
    predicts first (bench.cell.evaluate.predict), those of time.infer_examples_per_s: the trained model is
    not run on them twice. One example is predicted alone first, untimed, as inference_speed warms up the
    merged copy."""

    def __init__(self):
        self.seconds: float | None = None  # set by the call

    def __call__(self, bundle, model, evalset, task, batch_size: int, device, autocast) -> list:
        from bench.cell.evaluate import predict

        predict(bundle, model, evalset.rows(0, 1), task, 1, device, autocast)  # warm-up, as inference_speed's
        watch = Stopwatch(device)
        preds = predict(bundle, model, evalset, task, batch_size, device, autocast, clock=watch)
        self.seconds = watch.seconds
        return preds


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
