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


@pytest.fixture
def two_cells(tmp_path, monkeypatch) -> tuple[list, dict]:
    """Two cells that each run alone (no prediction), and the fake processes started for them, by label."""
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nmethods: [full, lora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                    "seeds: [1]\ncell_timeout_s: 300\n")
    started: dict[str, FakeCellProcess] = {}
    monkeypatch.setattr(local, "CellProcess", lambda *a, **k: FakeCellProcess(started, *a, **k))
    return grid.expand(load_suite(str(path)), threads=1), started


def runner(folder: Path, cells: list, handed, spool: Path) -> tuple[threading.Thread, list]:
    """The executor's loop in a thread, over two GPUs of ROOM, the cells it takes from `handed`: its records."""
    executor = LocalExecutor(quiet=True, gpus=list(DEVICES), rooms=dict.fromkeys(DEVICES, ROOM),
                             predicted_memory=lambda cell: None, ledger=Ledger({d: UUIDS[d] for d in DEVICES}, folder))
    done: list = []
    thread = threading.Thread(target=lambda: done.extend(executor.submit(handed, lambda c: spool, cells)), daemon=True)
    thread.start()
    return thread, done


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


def test_a_runner_waiting_in_where_beside_its_own_cell_claims_and_is_placed_once_the_gpu_drains(tmp_path, two_cells):
    """Its own cell runs on GPU 1, its next one needs a GPU whole: before, it claimed nothing until its own cell
    ended, so the other runner kept refilling GPU 0 for as long as that cell ran (hours, for a long cell)."""
    cells, started = two_cells
    folder = tmp_path / "ledger"
    other = Runner(folder, DEVICES)
    try:
        assert other.place("s0") == "0"
        thread, done = runner(folder, cells, iter(cells), tmp_path / "spool")
        until(lambda: cells[0].label in started, "the first cell starts")
        assert started[cells[0].label].device == "1"
        until(lambda: (cells[1].id, True) in lines(folder, "0"), "the runner claims GPU 0 for its next cell")
        assert other.place("s1") == "None"  # GPU 0 is held for it: s0's room is not taken again
        other.release("s0")
        until(lambda: cells[1].label in started, "the next cell starts once GPU 0 drains")
        assert started[cells[1].label].device == "0" and not select.select([started[cells[0].label].sentinel], [], [],
                                                                             0)[0]  # the first one still runs
        assert (cells[1].id, True) not in lines(folder, "0")
        for cell in cells:
            started[cell.label].end()
        thread.join(timeout=20)
        assert not thread.is_alive() and {c.label for c, _ in done} == {c.label for c in cells}
    finally:
        other.close()


def test_a_runner_whose_planned_cell_another_runner_took_withdraws_its_claim_and_claims_for_it_no_more(tmp_path,
                                                                                                        two_cells):
    """The runner plans both cells but is handed only the first (another runner sharing the suite took the second):
    once it finds no cell left its claim leaves the ledger, while its own cell runs on, and is never written again."""
    cells, started = two_cells
    folder = tmp_path / "ledger"
    other = Runner(folder, DEVICES)
    try:
        assert other.place("s0") == "0"
        thread, done = runner(folder, cells, iter(cells[:1]), tmp_path / "spool")
        until(lambda: (cells[1].id, True) in lines(folder, "0"), "the runner claims GPU 0 for its next planned cell")
        other.release("s0")
        until(lambda: (cells[1].id, True) not in lines(folder, "0"), "the claim leaves as the runner has no cell left")
        assert other.place("s1") == "0"  # nothing holds GPU 0 now
        seen = beats(folder, "1")
        until(lambda: len(beats(folder, "1") - seen) >= 1, "the runner steps again")  # its probe beside s1 on GPU 0
        seen = beats(folder, "1")
        until(lambda: len(beats(folder, "1") - seen) >= 1, "and again")
        assert all(not claim for d in DEVICES for _, claim in lines(folder, d))
        assert other.place("s2") == "0"
        started[cells[0].label].end()
        thread.join(timeout=20)
        assert not thread.is_alive() and [c.label for c, _ in done] == [cells[0].label]
    finally:
        other.close()
