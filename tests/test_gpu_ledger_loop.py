"""The ledger's queue through the local executor's real scheduling loop (bench/run/executors/local.py: `_schedule`),
which asks `where` for its next planned cell while cells of its own run and takes a cell only once that answers: a
runner that waits there is in the queue as one that waits in `place` is, and leaves it when it has no cell left.
The cell processes are fakes that end when the test says (the loop's placements, not the cells, are under test);
the other runner is a process of its own (tests/test_gpu_ledger_queue.py: Runner), on fake GPUs."""

from __future__ import annotations

import fcntl
import json
import os
import select
import threading
import time
from pathlib import Path

import pytest

from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.executors import local
from bench.run.executors.local import LocalExecutor
from bench.run.gpu_ledger import Ledger
from tests.test_gpu_ledger import UUIDS
from tests.test_gpu_ledger_queue import ROOM, Runner

DEVICES = ("0", "1")


class FakeCellProcess:
    """A cell process that ends (with an `ok` record) when the test writes a byte to its pipe."""

    def __init__(self, started: dict, cell, spool, quiet, device=None, show=True, budget=None):
        self.cell, self.device = cell, device
        self.sentinel, self.ending = os.pipe()
        started[cell.label] = self

    def end(self) -> None:
        os.write(self.ending, b"x")

    def poll(self) -> dict | None:
        return {"status": "ok", "env": {}} if select.select([self.sentinel], [], [], 0)[0] else None

    def kill(self) -> None:
        self.end()


class Loop:
    """A runner's executor loop in a thread, over two GPUs of ROOM, beside the other runner (`other`, a process): two
    cells that each run alone (no prediction), the fake processes started for them by label, and its records."""

    def __init__(self, tmp_path: Path):
        path = tmp_path / "loop.yaml"
        path.write_text("name: loop\nmethods: [full, lora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                        "seeds: [1]\ncell_timeout_s: 300\n")
        self.cells = grid.expand(load_suite(str(path)), threads=1)
        self.folder, self.spool = tmp_path / "ledger", tmp_path / "spool"
        self.started: dict[str, FakeCellProcess] = {}
        self.done: list = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.other = Runner(self.folder, DEVICES)

    def start(self, handed: list) -> None:
        """The loop, planning every cell and handed those of `handed` (the others: taken by another runner)."""
        def takes():
            for cell in handed:
                if not self.stopping.is_set():
                    yield cell

        executor = LocalExecutor(quiet=True, gpus=list(DEVICES), rooms=dict.fromkeys(DEVICES, ROOM),
                                 predicted_memory=lambda cell: None,
                                 ledger=Ledger({d: UUIDS[d] for d in DEVICES}, self.folder))
        self.thread = threading.Thread(target=lambda: self.done.extend(
            executor.submit(takes(), lambda cell: self.spool, self.cells)), daemon=True)
        self.thread.start()

    def end(self) -> None:
        """Every cell it runs ends, and any it starts meanwhile; the loop ends with them (its records in `done`)."""
        deadline = time.monotonic() + 20  # a hang guard
        while self.thread.is_alive() and time.monotonic() < deadline:
            for fake in list(self.started.values()):
                fake.end()
            self.thread.join(timeout=0.1)
        assert not self.thread.is_alive()

    def close(self) -> None:
        """No cell handed any more, the other runner gone, every cell ended: no loop outlives its test."""
        self.stopping.set()
        self.other.close()
        if self.thread is not None:
            self.end()
        for fake in self.started.values():
            os.close(fake.sentinel)
            os.close(fake.ending)


@pytest.fixture
def loop(tmp_path, monkeypatch) -> Loop:
    runs = Loop(tmp_path)
    monkeypatch.setattr(local, "CellProcess", lambda *a, **k: FakeCellProcess(runs.started, *a, **k))
    yield runs
    runs.close()


def until(condition, what: str) -> None:
    deadline = time.monotonic() + 20  # a hang guard: the loop steps every POLL_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def read(folder: Path, device: str) -> list[dict]:
    """The device's ledger lines, read under its lock (the runner in the thread writes it every POLL_S)."""
    with open(folder / f"{UUIDS[device]}.ledger") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        return [json.loads(line) for line in f.read().splitlines()]


def lines(folder: Path, device: str) -> list[tuple[str, bool]]:
    """(cell, a waiting claim) of each line."""
    return [(line["cell"], "waits" in line) for line in read(folder, device)]


def beats(folder: Path, device: str) -> set[float]:
    return {line["beat"] for line in read(folder, device)}


def test_a_runner_waiting_in_where_beside_its_own_cell_claims_and_is_placed_once_the_gpu_drains(loop):
    """Its own cell runs on GPU 1, its next one needs a GPU whole: before, it claimed nothing until its own cell
    ended, so the other runner kept refilling GPU 0 for as long as that cell ran (hours, for a long cell)."""
    first, second = loop.cells
    assert loop.other.place("s0") == "0"
    loop.start(loop.cells)
    until(lambda: first.label in loop.started, "the first cell starts")
    assert loop.started[first.label].device == "1"
    until(lambda: (second.id, True) in lines(loop.folder, "0"), "the runner claims GPU 0 for its next cell")
    assert loop.other.place("s1") == "None"  # GPU 0 is held for it: s0's room is not taken again
    loop.other.release("s0")
    until(lambda: second.label in loop.started, "the next cell starts once GPU 0 drains")
    assert loop.started[second.label].device == "0"
    assert loop.started[first.label].poll() is None  # while the first one still runs
    assert (second.id, True) not in lines(loop.folder, "0")
    loop.end()
    assert {c.label for c, _ in loop.done} == {first.label, second.label}


def test_a_runner_whose_planned_cell_another_runner_took_withdraws_its_claim_and_claims_for_it_no_more(loop):
    """The runner plans both cells but is handed only the first (another runner sharing the suite took the second):
    once it finds no cell left its claim leaves the ledger, while its own cell runs on, and is never written again."""
    first, second = loop.cells
    assert loop.other.place("s0") == "0"
    loop.start([first])
    until(lambda: (second.id, True) in lines(loop.folder, "0"), "the runner claims GPU 0 for its next planned cell")
    loop.other.release("s0")
    until(lambda: (second.id, True) not in lines(loop.folder, "0"), "the claim leaves as the runner has no cell left")
    assert loop.other.place("s1") == "0"  # nothing holds GPU 0 now
    for _ in range(2):  # two more steps of its loop, each asking where beside s1 on GPU 0
        seen = beats(loop.folder, "1")
        until(lambda: beats(loop.folder, "1") - seen, "the runner steps again")
    assert all(not claim for d in DEVICES for _, claim in lines(loop.folder, d))
    assert loop.other.place("s2") == "0"
    assert loop.started[first.label].poll() is None
    loop.end()
    assert [c.label for c, _ in loop.done] == [first.label]
