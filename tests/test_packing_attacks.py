"""`run --gpus` under attack: a fake nvidia-smi that reports garbage, full or missing GPUs, bad flags, and kills: of
the runner while packed cells run, and of one rank of a sharded cell. Cells run on this machine's CPU, pinned to GPU
indices no machine has (as in tests/test_packing.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import BadInput
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.executors import local
from bench.run.executors.local import LocalExecutor
from bench.run.locks import lock_problem
from bench.run.packing import MIB
from bench.run.runner import run_grid
from bench.run.store import Store
from tests.test_faults import ROOT, cli, gone, suite_text, wait_for
from tests.test_packing_shards import SHARDED_CELL_TIMEOUT_S, sharded_run

GIB = 1024**3


def fake_smi(folder: Path, memories: dict[str, str]) -> Path:
    """An nvidia-smi that lists one GPU per item of `memories` (-L) and answers the memory query of GPU i (-i i) with
    memories[i] (memory.total, memory.used in MiB, or whatever garbage); another index is not found."""
    smi = folder / "nvidia-smi"
    folder.mkdir(exist_ok=True)
    listing = "".join(f"GPU {i}: Fake GPU (UUID: GPU-{i})\\n" for i in range(len(memories)))
    answers = "".join(f"{i}) printf '%s\\n' '{memory}';;\n" for i, memory in memories.items())
    smi.write_text(f'#!/bin/sh\nif [ "$1" = "-L" ]; then printf "{listing}"; exit 0; fi\n'
                   f'case "$2" in\n{answers}*) echo "No devices were found"; exit 6;;\nesac\n')
    smi.chmod(0o755)
    return smi


@pytest.fixture
def smi_gpus(tmp_path, monkeypatch):
    """Put a fake nvidia-smi first on PATH answering for GPUs 0, 1, .. (no CUDA_VISIBLE_DEVICES: it lists them)."""
    def install(*memories: str) -> None:
        smi = fake_smi(tmp_path / "bin", {str(i): memory for i, memory in enumerate(memories)})
        monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # visible_gpus sets it (for the cells): restored after
    return install


TWO = ("81559, 559", "81559, 559")


@pytest.mark.parametrize("memories, flags, flag, said", [
    (TWO, ["--gpus", "0,0"], "--gpus", "distinct GPU indices among the visible ones: 0, 1"),
    (TWO, ["--gpus", "0,1,2"], "--gpus", "distinct GPU indices among the visible ones: 0, 1"),
    (TWO, ["--gpus", "0,1", "--gpus-per-cell", "3"], "--gpus-per-cell", "from 1 to the 2 of --gpus"),
    (TWO, ["--gpus", "0", "--gpus-per-cell", "2"], "--gpus-per-cell", "from 1 to the 1 of --gpus"),
    # full: another process holds all of GPU 1's memory; nvidia-smi says more is used than there is; too little left
    # for one cell's CUDA context
    (("81559, 559", "81559, 81559"), ["--gpus", "all"], "--gpus", "GPU 1 has 0 B free"),
    (("1000, 2000",), ["--gpus", "0"], "--gpus", "GPU 0 has 0 B free"),
    (("81559, 81000", "81559, 81559"), ["--gpus", "0,1"], "--gpus", "GPU 0 has 559.0 MB free, GPU 1 has 0 B free"),
])
def test_bad_gpus_are_one_bad_input_naming_the_flag_before_any_work(smi_gpus, tmp_path, capsys, memories, flags,
                                                                    flag, said):
    """The plan (--dry-run) refuses as the run does, before any cell starts. Before the fix a full GPU (used >= total)
    counted as nvidia-smi not answering: the run went on one cell per GPU, each pinned to a GPU without room for even
    its CUDA context; and one with a little room took cells that could only run out of memory."""
    smi_gpus(*memories)
    results = tmp_path / "results"
    code = main(["run", "--suite", "smoke", "--dry-run", "--results", str(results), *flags])
    err = capsys.readouterr().err
    assert code == 2 and f"{flag}: " in err and said in err, err
    assert not results.exists()


def test_gpus_all_refuses_a_gpu_listed_twice_in_cuda_visible_devices(monkeypatch, capsys):
    """CUDA_VISIBLE_DEVICES=0,0: before the fix `--gpus all` took GPU 0 twice, as two slots (with --pack off, two
    cells at once on one GPU; its threads halved)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "90,91,90")
    with pytest.raises(BadInput, match="CUDA_VISIBLE_DEVICES lists GPU 90 more than once") as refused:
        local._build(quiet=True, jobs=1, gpus="all", pack="off")
    assert refused.value.where == "--gpus"
    assert local._build(quiet=True, jobs=1, gpus="90,91", pack="off").devices == ["90", "91"]  # distinct: as asked


@pytest.mark.parametrize("flags", [["--gpus", "all", "--gpus-per-cell", "nan"],
                                   ["--gpus", "all", "--gpus-per-cell", "inf"],
                                   ["--executor", "slurm", "--mem-per-cell", "inf"],
                                   ["--executor", "ray", "--cpus-per-cell", "nan"]])
def test_a_flag_of_a_number_that_is_not_finite_is_refused_by_name(smi_gpus, tmp_path, capsys, flags):
    """Before the fix argparse's float took 'nan' and 'inf', and --gpus-per-cell then crashed (ValueError, OverflowError
    in int()) as an unexpected error instead of naming the flag."""
    smi_gpus(*TWO)
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--suite", "smoke", "--dry-run", "--results", str(tmp_path / "results"), *flags])
    assert stopped.value.code == 2
    assert f"argument {flags[-2]}: invalid number value: '{flags[-1]}'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("garbage", ["[N/A], [N/A]", "81559 MiB, 559 MiB", "80000, -100", "0, 0", "-5, -10",
                                     "81559, 559, 3", "81559, 559\n81559, 559", "", "\x00\xff"])
def test_nvidia_smi_garbage_is_no_reading_and_the_gpus_run_one_cell_each(smi_gpus, tmp_path, capsys, garbage):
    """What is not a total above 0 and a used amount of at least 0 is no reading: the run packs nothing (one cell per
    GPU, as before packing) and says so. Before the fix a negative `used` gave a GPU more room than it has."""
    smi_gpus(garbage.replace("\n", "' '"), "81559, 559")
    assert local.device_rooms(["1"]) == {"1": 81000 * MIB}
    assert local.device_rooms(["0", "1"]) is None
    executor = local._build(quiet=True, jobs=1, gpus="all", pack=None, predicted_memory=lambda cell: None)
    assert executor.rooms is None and executor.devices == ["0", "1"]
    said = capsys.readouterr().err
    assert "nvidia-smi did not give every GPU's memory, so one cell runs on each GPU at a time" in said


def timeouts_show_in_the_record() -> None:
    """What would end a sharded cell that missed its lost rank is its own timeout, recorded `timeout` (a rank 0 left
    waiting in a collective reaches the cell's timeout before the collective's, which would have failed it with
    the collective's error): so a record of another status shows the cell ended before any timeout, without a
    clock in the test."""
    from bench.cell.ranks import COLLECTIVE_TIMEOUT

    assert SHARDED_CELL_TIMEOUT_S < COLLECTIVE_TIMEOUT.total_seconds()


@pytest.mark.slow
def test_a_sharded_cell_whose_rank_is_killed_ends_killed_naming_the_rank_and_leaves_no_rank_behind(tmp_path):
    """Rank 1 of a cell sharded over two fake GPUs (gloo) is SIGKILLed in its build, rank 0 waits for it in a
    collective. Before the fix the cell process died of torch's ProcessExitedException: `failed`, "cell process ended
    with exit code 1", the rank named only in the output. Now the cell ends as its rank did (`killed`, the signal
    recorded) with the rank named, as soon as the rank is gone (not at a timeout: reaching one would be the record's
    status, see timeouts_show_in_the_record), and no rank is left."""
    timeouts_show_in_the_record()
    log = tmp_path / "ranks.log"
    record = sharded_run(tmp_path, f"{{name: fault-kill-on-rank-1, overrides: {{log: '{log}'}}}}")
    assert record["status"] == "killed" and record["env"]["shards"] == 2 and record["error"]["signal"] == "SIGKILL"
    assert record["error"]["message"].startswith("rank 1 of 2 was killed by SIGKILL before writing a record")
    ranks = dict(line.split() for line in log.read_text().splitlines())
    assert sorted(ranks) == ["0", "1"] and all(gone(int(pid), within_s=2) for pid in ranks.values())
    assert "process 1 terminated with signal SIGKILL" in record["error"]["traceback"]  # torch's words, as evidence


@pytest.mark.slow
def test_a_sharded_cell_whose_rank_exits_quietly_ends_at_once_naming_the_rank(tmp_path):
    """Rank 1 exits with code 0 and no record. torch counts that as a success, so before the fix the cell was rank 0's
    record: on gloo `failed` with "Connection closed by peer", the cause hidden (on NCCL rank 0 would wait in its
    collective until the timeout). Now the cell ends as soon as the rank is gone: `failed`, the rank named (not
    `timeout`, see timeouts_show_in_the_record)."""
    timeouts_show_in_the_record()
    record = sharded_run(tmp_path, "fault-exit-on-rank-1")
    assert record["status"] == "failed" and record["env"]["shards"] == 2 and record["error"]["exit_code"] == 0
    assert record["error"]["message"] == "rank 1 of 2 ended with exit code 0 before writing a record"


@pytest.mark.slow
def test_kill_9_of_a_packed_runner_leaves_exactly_its_unfinished_cells_to_the_next(tmp_path, monkeypatch):
    """Two fake GPUs (nvidia-smi on PATH), four cells packed at once: two finish, two (a second per step) are
    running when the runner is SIGKILLed. Every process it started dies with it, nothing of the two is stored or
    adopted (their partial records are evidence, never results), and a second runner trains exactly those two:
    four records, one each, the finished two untouched."""
    import psutil

    smi = fake_smi(tmp_path / "bin", {"90": "81559, 559", "91": "81559, 559"})
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "90,91")  # GPU indices no machine has: the cells run on the CPU
    suite = tmp_path / "faults.yaml"
    suite.write_text(suite_text("[{name: fault-slow, train: {max_steps: 1000}}, full]", seeds="[1, 2]", timeout=600))
    results = tmp_path / "results"
    runner = cli("run", "--suite", str(suite), "--results", str(results), "--gpus", "all")
    folder = results / "faults"
    wait_for(lambda: len(list(folder.glob("*.json"))) == 2, within_s=120)
    cells = grid.expand(load_suite(str(suite)))
    slow = [c for c in cells if c.method == "fault-slow"]
    assert all(list((folder / ".incoming").glob(f"{c.id}.*.log")) for c in slow)  # both started
    started = psutil.Process(runner.pid).children(recursive=True)  # fork server, cells, resource tracker
    finished = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    runner.send_signal(signal.SIGKILL)
    runner.communicate()
    assert all(gone(p.pid) for p in started), "a process of the runner outlived it"
    assert {json.loads(data)["cell"]["method"] for data in finished.values()} == {"full"}
    assert {p.name for p in folder.glob("*.json")} == set(finished)
    assert not list((folder / ".incoming").glob("*.json"))
    store = Store(results)
    for cell in slow:
        assert lock_problem(store.lock_path(cell.suite, cell.id)) == f"process {runner.pid} is gone"
    quick = [replace(c, train=replace(c.train, max_steps=2)) if c in slow else c for c in cells]  # the same ids
    rooms = dict.fromkeys(["90", "91"], 81000 * MIB)
    executor = LocalExecutor(quiet=True, gpus=list(rooms), rooms=rooms,
                             predicted_memory=lambda cell: {"predicted_peak_bytes": 64 * MIB})
    summary = run_grid(quick, store, executor, quiet=True)
    assert summary.statuses == {"ok": 2} and summary.skipped == 2 and summary.adopted == 0
    kept = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    assert sorted(json.loads(r)["cell"]["id"] for r in kept.values()) == sorted(f"{c.id}" for c in cells)
    assert {name: kept[name] for name in finished} == finished
    assert {json.loads(r)["status"] for r in kept.values()} == {"ok"} and not list(folder.glob("*.lock"))


@pytest.mark.slow
def test_kill_9_of_the_runner_takes_a_sharded_cells_ranks_along(tmp_path):
    """The runner of a cell sharded over two fake GPUs (gloo) is SIGKILLed while both ranks hang deaf to SIGINT, as
    ranks waiting inside an NCCL collective are. Before the fix the kernel sent the ranks only the SIGINT torch asks
    for when their cell process died: they ran on, orphans holding their GPUs (until NCCL's timeout on a GPU box,
    for ever here). Now each rank dies with its cell process."""
    import psutil

    log = tmp_path / "ranks.log"
    code = (f"from tests.test_packing_shards import sharded_run\nfrom pathlib import Path\n"
            f"sharded_run(Path({str(tmp_path)!r}), \"{{name: fault-deaf-hang, overrides: {{log: '{log}'}}}}\")\n")
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    ranks: list[int] = []
    try:
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2, within_s=120)
        ranks = [int(line.split()[1]) for line in log.read_text().splitlines()]
        started = psutil.Process(runner.pid).children(recursive=True)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        assert all(gone(p.pid) for p in started), "a process of the runner outlived it"
    finally:
        for pid in ranks:  # what the test may have left: never an orphan on the test machine
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
