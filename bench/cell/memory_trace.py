"""Memory over a window, sampled: what the device and the process held while training ran, not only at its peak.

A thread reads a few memory counters every MEMORY_SAMPLE_INTERVAL_S (bench/figures.py) and keeps every
reading; `summary` turns each counter's readings into the figures memory.train_<counter>_{mean,p99,max}_bytes.
The readings never synchronise the device: the CUDA allocator's counters are host-side bookkeeping (a block
counts from the moment the host enqueues the work that allocates it), NVML asks the driver and the RSS is a
file of /proc. A reading costs tens of microseconds every 50 ms, taken while the training thread runs its
kernels without the interpreter lock. Readings are kept as 8-byte integers: 0.6 MB per counter per hour.
"""

from __future__ import annotations

import array
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.figures import MEMORY_SAMPLE_INTERVAL_S

Reading = dict[str, "int | None"]  # counter -> bytes; None: this counter could not be read this time


def rss_bytes() -> int | None:
    """The process's resident set now (the second field of /proc/self/statm, in pages): what VmHWM peaks over."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):  # no /proc (macOS): the RSS figures stay null
        return None


def allocator_bytes(device_index: int) -> Reading:
    """The CUDA caching allocator's reserved and allocated bytes now, from one read of its statistics (what
    torch.cuda.memory_reserved and memory_allocated each read whole)."""
    stats = torch.cuda.memory_stats_as_nested_dict(device_index)
    return {"reserved": stats["reserved_bytes"]["all"]["current"],
            "allocated": stats["allocated_bytes"]["all"]["current"]}


class MemorySampler:
    """Every reading of `read()` (a dict of counters), taken on a thread every `interval_s` while running, and
    once as it starts and as it stops. It may start and stop several times (the training window's evaluations
    are left out); the readings of every run count together."""

    def __init__(self, read: Callable[[], Reading], interval_s: float = MEMORY_SAMPLE_INTERVAL_S):
        self.read, self.interval_s = read, interval_s
        self.readings: dict[str, array.array] = {}
        self.instants = 0  # times read() was called
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        self.instants += 1
        try:
            values = self.read()
        except Exception:  # a failed reading is a missing one, never a crash of the cell
            return
        for counter, value in values.items():
            if value is not None:
                self.readings.setdefault(counter, array.array("q")).append(value)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memory-sampler")
        self._thread.start()

    def stop(self) -> None:
        """Ends the thread (waits for its reading in progress), then reads once more."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()

    def peak(self, counter: str) -> int | None:
        values = self.readings.get(counter)
        return max(values) if values else None

    def summary(self, counter: str) -> dict[str, int | None]:
        """mean, p99 and max of a counter's readings, in bytes rounded to the nearest byte; p99 is numpy's
        percentile with linear interpolation (its default): the value at rank 0.99 × (n − 1) of the sorted
        readings, interpolated between its two neighbours. All None without a reading."""
        values = self.readings.get(counter)
        if not values:
            return {"mean": None, "p99": None, "max": None}
        held = np.frombuffer(values, dtype=np.int64).astype(np.float64)
        return {"mean": round(float(held.mean())), "p99": round(float(np.percentile(held, 99))), "max": max(values)}
