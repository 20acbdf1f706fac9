"""Memory over the training window (bench/cell/memory_trace.py, memory.train_* in bench/figures.py): the statistics
against a hand computation on known readings, the thread's life on every path, and a real tiny cell's figures
against its exact peaks. No test asserts on wall-clock time."""

import os
import threading

import pytest
import torch

from bench.cell import measure
from bench.cell.measure import PeakMemory
from bench.cell.memory_trace import MemorySampler, rss_bytes


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "memory-sampler"]


def scripted(readings: list):
    """A reader returning each of `readings` in turn: a dict of counters, or an exception to raise."""
    queue = iter(readings)

    def read():
        value = next(queue)
        if isinstance(value, Exception):
            raise value
        return value

    return read


def test_mean_p99_and_max_of_known_readings():
    """Six instants (one at start, four asked for, one at stop; the thread never wakes within an hour): a failed
    reading and a missing counter count as instants without a value. By hand, the sorted readings 100 300 500 700
    900: mean 500; p99 at rank 0.99 × 4 = 3.96, so 700 + 0.96 × (900 − 700) = 892; max 900."""
    sampler = MemorySampler(scripted([{"rss": 500}, {"rss": 100, "nvml": None}, RuntimeError("driver gone"),
                                      {"rss": 900}, {"rss": 300}, {"rss": 700}]), interval_s=3600)
    sampler.start()
    for _ in range(4):
        sampler.sample()
    sampler.stop()
    assert sampler.instants == 6
    assert sampler.summary("rss") == {"mean": 500, "p99": 892, "max": 900}
    assert sampler.peak("rss") == 900
    assert sampler.summary("nvml") == {"mean": None, "p99": None, "max": None} and sampler.peak("nvml") is None


def test_p99_of_many_readings_against_numpy_and_by_hand():
    """1..1000 in a shuffled order: p99 at rank 0.99 × 999 = 989.01 between 990 and 991, so 990.01: 990."""
    values = list(range(1, 1001))
    values = values[500:] + values[:500]
    sampler = MemorySampler(scripted([{"allocated": v} for v in values]), interval_s=3600)
    for _ in values:
        sampler.sample()
    assert sampler.summary("allocated") == {"mean": 500, "p99": 990, "max": 1000}  # mean 500.5 rounds to even


def test_the_thread_reads_until_stopped_and_ends():
    sampler = MemorySampler(lambda: {"rss": 1}, interval_s=0.001)
    sampler.start()
    assert len(sampler_threads()) == 1
    done = threading.Event()
    while sampler.instants < 5 and not done.wait(0.01):  # however long the machine takes: no clock asserted
        pass
    sampler.stop()
    assert not sampler_threads() and sampler.instants >= 5
    sampler.stop()  # a second stop reads nothing more
    assert sampler.instants == len(sampler.readings["rss"])


def test_the_thread_stops_when_the_window_raises_or_runs_out_of_memory():
    for error in (RuntimeError("boom"), torch.cuda.OutOfMemoryError("no room")):
        with pytest.raises(type(error)):
            with PeakMemory("cpu", trace=True) as peak:
                assert len(sampler_threads()) == 1
                raise error
        assert not sampler_threads()
        with pytest.raises(type(error)):
            with PeakMemory("cpu", trace=True) as peak:
                with peak.excluded():
                    assert not sampler_threads()  # an evaluation during training is not sampled
                    raise error
        assert not sampler_threads()


def test_excluded_work_is_never_read(monkeypatch):
    """The resident set read as huge while an evaluation during training runs: no reading sees it, the readings
    at the exclusion's edges included."""
    evaluating = threading.Event()
    monkeypatch.setattr(measure, "rss_bytes", lambda: 10 ** 15 if evaluating.is_set() else 1000)
    with PeakMemory("cpu", trace=True) as peak:
        with peak.excluded():
            evaluating.set()
            evaluating.clear()
    figures = peak.trace_figures
    assert figures["train_memory_samples"] >= 4  # start, stop before the exclusion, start after it, stop (+ thread)
    assert figures["train_rss_max_bytes"] == figures["train_rss_mean_bytes"] == 1000
    assert figures["train_reserved_mean_bytes"] is None and figures["train_nvml_p99_bytes"] is None
    assert "train_nvml_max_bytes" not in figures  # NVML's maximum is nvml_peak_bytes


def test_the_resident_set_reading_is_the_status_files():
    """/proc/self/statm's resident pages against /proc/self/status's VmRSS, read back to back."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    vm_rss = int(status["VmRSS"].split()[0]) * 1024
    assert abs(rss_bytes() - vm_rss) <= 64 * 2 ** 20  # other threads may allocate in between; same order


def rss_counting_slack() -> int:
    """How far two reads of a process's resident set may disagree in Linux ≥ 6.2, which keeps it in per-CPU
    counters read without summing them: each read is off by up to batch × CPUs pages (percpu_counter_batch =
    max(32, 2 × CPUs)); two reads (a reading, VmHWM) twice that."""
    cpus = os.cpu_count() or 1
    return 2 * max(32, 2 * cpus) * cpus * os.sysconf("SC_PAGE_SIZE")


def check_trace_against_peaks(memory: dict) -> None:
    """A cell's memory.train_* figures: present, ordered mean ≤ max and p99 ≤ max, no reading above the exact
    peak of its counter (the RSS up to the kernel's counting slack)."""
    assert memory["train_memory_samples"] >= 2
    counters = ["rss"] + (["reserved", "allocated"] if torch.cuda.is_available() else [])
    for counter in counters:
        mean, p99, top = (memory[f"train_{counter}_{stat}_bytes"] for stat in ("mean", "p99", "max"))
        assert 0 < mean <= top and 0 < p99 <= top, counter
    assert memory["train_rss_max_bytes"] <= memory["cpu_peak_rss_bytes"] + rss_counting_slack()
    if torch.cuda.is_available():
        assert memory["train_allocated_max_bytes"] <= memory["device_peak_allocated_bytes"]
        assert memory["train_reserved_max_bytes"] <= memory["device_peak_reserved_bytes"]
        assert memory["train_allocated_max_bytes"] <= memory["train_reserved_max_bytes"]
    else:
        assert memory["train_allocated_mean_bytes"] is None and memory["train_reserved_max_bytes"] is None


def test_a_tiny_cell_records_its_memory_over_training(tmp_path):
    from bench.cell.recipe import run_cell
    from bench.plan import grid
    from bench.plan.suite import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmethods: [full]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\nseeds: [1]\n"
                     "train: {max_steps: 6, batch_size: 8, max_length: 32, max_eval_samples: 16, eval_every: 3}\n")
    record = run_cell(grid.expand(load_suite(str(suite)))[0], quiet=True)
    assert record["status"] == "ok", record["error"]
    check_trace_against_peaks(record["memory"])
    assert not sampler_threads()
