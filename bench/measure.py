"""Measurements recorded per cell. Each figure has one definition, here and in docs/measurement.md.

params.total          parameter elements in the adapted model, each tensor counted once (tied weights
                      once); includes frozen copies a method keeps (e.g. peft's modules_to_save originals)
params.trainable      elements of parameters with requires_grad=True after the method is applied
params.trainable_pct  100 × trainable / total
params.stored         elements of the tensors that must be saved to restore the fine-tuned model
params.stored_bytes   size in bytes of those tensors written as one safetensors file
memory.peak_bytes     the training window's peak: CUDA max_memory_allocated on a GPU, else the process's
                      peak resident set (VmHWM after resetting it with /proc/self/clear_refs); which one
                      is in memory.peak_source
time.*                wall-clock seconds: load_s (data + model + method), train_s (optimizer steps only),
                      eval_s (final evaluation); train_samples_per_s = samples / train_s
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from pathlib import Path

import torch


def _key(t: torch.Tensor):
    """Identity of a tensor's memory: same storage, offset and shape means the same tensor."""
    if t.device.type == "meta":
        return id(t)
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))


def unique_tensors(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        k = _key(t)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def count_params(model: torch.nn.Module) -> dict:
    params = unique_tensors(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"total": total, "trainable": trainable,
            "trainable_pct": 100.0 * trainable / total if total else None}


def stored_size(state: dict[str, torch.Tensor]) -> dict:
    """Elements and safetensors bytes of the state a fine-tuned model must keep."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, t in state.items():
        if _key(t) not in seen:  # safetensors refuses shared tensors; tied weights are stored once
            seen.add(_key(t))
            tensors[name] = t.detach().to("cpu").contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter.safetensors"
        save_file(tensors, str(path))
        size = path.stat().st_size
    return {"stored": sum(t.numel() for t in tensors.values()), "stored_bytes": size}


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


class PeakMemory:
    """Peak memory over a window: CUDA allocator peak on a GPU, else the process's peak RSS."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.peak_bytes: int | None = None
        self.source: str | None = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._reset = _reset_peak_rss()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes, self.source = torch.cuda.max_memory_allocated(), "device_peak_allocated_bytes"
        elif self._reset:  # without a reset, VmHWM would include everything before the window
            self.peak_bytes, self.source = _peak_rss_bytes(), "cpu_peak_rss_bytes"
        return False


@contextlib.contextmanager
def timed(times: dict, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        times[key] = time.perf_counter() - start
