"""Packing runners (the command line) beside another runner that holds part of their GPU in the machine's ledger
(bench/run/gpu_ledger.py): a runner whose cells are all done ends, and one that waited runs its cells once the other
lets go. A fake nvidia-smi on PATH states one GPU (an index no machine has, so the cells run on the CPU); the other
runner is a process of its own that places through the ledger, then releases when told on its stdin."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.run.gpu_ledger import LEDGER_ENV
from tests.test_faults import ROOT, cli, records, suite_text

UUID = "GPU-00000000-0000-4000-8000-0000000000a0"
HOLD = ("import sys\nfrom pathlib import Path\nfrom bench.run.gpu_ledger import Ledger, Shared\n"
        "from bench.run.packing import Packer\n"
        "packing = Shared(Packer({'90': int(sys.argv[2])}), Ledger({'90': sys.argv[3]}, Path(sys.argv[1])))\n"
        "alone = sys.argv[4] == 'alone'\n"
        "placement = packing.place(None if alone else 2**20, alone=alone, cell='other-suite-cell')\n"
        "print(placement, flush=True)\nsys.stdin.readline()\npacking.release(placement, 'other-suite-cell')\n"
        "print('released', flush=True)\nsys.stdin.readline()\n")


@pytest.fixture
def one_cell_suite(tmp_path, monkeypatch) -> tuple[Path, int]:
    """A suite of one short cell, and a GPU with room for four of it, as nvidia-smi says."""
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.run.packing import cell_budget, footprint
    from bench.tools.plan_cost import predicted_memory

    suite = tmp_path / "one.yaml"
    suite.write_text(suite_text(f"[{{name: logged-full, overrides: {{log: '{tmp_path / 'log'}', sleep_s: 1}}}}]",
                                name="one", timeout=300))
    room = 4 * footprint(cell_budget(predicted_memory(grid.expand(load_suite(str(suite)), threads=1)[0])))
    one_fake_gpu(tmp_path, monkeypatch, UUID, room // 2**20)
    return suite, room


def one_fake_gpu(tmp_path: Path, monkeypatch, uuid: str, free_mib: int) -> None:
    """A fake nvidia-smi on PATH stating one GPU of `uuid` with `free_mib` free, CUDA_VISIBLE_DEVICES naming an
    index no machine has (the cells run on the CPU), and the machine's ledger in tmp_path/ledger."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(f'#!/bin/sh\ncase "$*" in\n*uuid*) echo {uuid};;\n*memory*) echo "{free_mib}, 0";;\n'
                   f'*) echo "GPU 0: Fake GPU (UUID: {uuid})";;\nesac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "90")
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "ledger"))


def holder(folder: Path, room: int, how: str) -> subprocess.Popen:
    """Another runner holding a small cell ("small") or the whole GPU ("alone") until a line on its stdin."""
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(room), UUID, how], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert other.stdout.readline().startswith("Placement(device='90'")
    return other


def run(suite: Path, results: Path) -> tuple[subprocess.Popen, list[str]]:
    """The runner, its stderr collected line by line as it comes (read while it runs)."""
    runner = cli("run", "--suite", str(suite), "--results", str(results), "--gpus", "all")
    said: list[str] = []
    threading.Thread(target=lambda: said.extend(runner.stderr), daemon=True).start()
    return runner, said


def test_a_runner_whose_cells_are_done_ends_while_another_holds_part_of_its_gpu(tmp_path, one_cell_suite):
    """The room the other holds is not what its last cell needs: it must not wait for it once nothing is left."""
    suite, room = one_cell_suite
    other = holder(tmp_path / "ledger", room, "small")
    try:
        runner, said = run(suite, tmp_path / "results")
        assert runner.wait(timeout=240) == 0, said
    finally:
        other.kill()
        other.wait()
    assert [r["status"] for r in records(tmp_path / "results", "one").values()] == ["ok"]


def test_a_runner_that_waited_for_another_runs_its_cells_once_it_lets_go(tmp_path, one_cell_suite):
    suite, room = one_cell_suite
    other = holder(tmp_path / "ledger", room, "alone")
    try:
        runner, said = run(suite, tmp_path / "results")
        deadline = time.monotonic() + 240
        while not any("waiting for GPU room other runners on this machine hold" in line for line in said):
            assert runner.poll() is None and time.monotonic() < deadline, said
            time.sleep(0.05)
        assert not records(tmp_path / "results", "one")  # it waits: nothing ran beside the GPU held whole
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "released"
        assert runner.wait(timeout=240) == 0, said
    finally:
        other.kill()
        other.wait()
    assert [r["status"] for r in records(tmp_path / "results", "one").values()] == ["ok"]
