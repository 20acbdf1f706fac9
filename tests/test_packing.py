"""Packing cells onto GPUs by predicted memory (bench/run/packing.py, the local executor's `--gpus`): the scheduler
with fake devices and capacities, then real cell processes pinned to GPU indices no machine has (so they run on
this machine's CPU, or on a GPU box on its CPU too), which is where placement, budgets, retries and kills are
checked without a GPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bench.errors import BadInput
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.executors import local
from bench.run.executors.local import LocalExecutor
from bench.run.packing import (
    CONTEXT_BYTES,
    MEMORY_MARGIN,
    MIB,
    OTHER_BYTES,
    Packer,
    Placement,
    cell_budget,
    packing_order,
)
from bench.run.runner import run_grid
from bench.run.store import Store

GIB = 1024**3
TRAIN = "{batch_size: 8, max_steps: 2, max_length: 16, eval_batch_size: 64, max_eval_samples: 32}"
NO_GPU = ["90", "91"]  # GPU indices no machine has: a cell pinned to one sees no CUDA device


def budget_of(predicted: int) -> int:
    return cell_budget({"predicted_peak_bytes": predicted})


def test_a_budget_is_the_prediction_plus_its_margins():
    # 1,000 MiB predicted: 1.10 x 1,128 MiB = 1.1 x 1,182,793,728 B = 1,301,073,100.8 B, rounded up to the byte
    assert MEMORY_MARGIN == 1.10 and OTHER_BYTES == 128 * MIB
    assert budget_of(1000 * MIB) == 1301073101
    for unknown in (None, {}, {"predicted_peak_bytes": None}, {"predicted_peak_bytes": 0},
                    {"predicted_peak_bytes": True}, {"predicted_peak_bytes": 1.5e9}):
        assert cell_budget(unknown) is None


def test_cells_share_a_device_while_their_footprints_fit():
    room = 10 * GIB
    packer = Packer({"0": room})
    small = budget_of(1 * GIB)  # footprint 1.10 x 1.125 GiB + 1 GiB context = 2.2375 GiB: four fit in 10 GiB
    placed = [packer.place(small) for _ in range(4)]
    assert all(p is not None and p.device == "0" and p.budget == small for p in placed)
    assert packer.used["0"] == 4 * (small + CONTEXT_BYTES) <= room
    assert packer.place(small) is None  # a fifth would pass the room: it waits
    packer.release(placed[0])
    assert packer.place(small) == placed[0]  # its room back, the next one starts


def test_best_fit_keeps_the_big_gap_for_a_big_cell():
    packer = Packer({"0": 40 * GIB, "1": 12 * GIB})
    small = packer.place(budget_of(2 * GIB))
    assert small.device == "1"  # the device it fills best, not the first or the emptiest
    big = packer.place(budget_of(30 * GIB))
    assert big.device == "0" and big.budget == budget_of(30 * GIB)


def test_a_cell_larger_than_any_device_runs_alone_on_the_largest_empty_one():
    packer = Packer({"0": 20 * GIB, "1": 80 * GIB})
    huge = budget_of(100 * GIB)
    assert not packer.shares(huge)
    first = packer.place(budget_of(1 * GIB))
    assert first.device == "0"  # best fit
    alone = packer.place(huge)
    assert alone.device == "1" and alone.alone and alone.budget is None  # the whole device, no budget
    assert packer.place(budget_of(1 * GIB)).device == "0"  # nothing joins a device held alone
    assert packer.place(huge) is None and packer.place(None) is None  # no empty device left: they wait
    packer.release(alone)
    assert packer.place(budget_of(60 * GIB)).device == "1"


def test_a_cell_larger_than_any_device_takes_gpus_per_cell_empty_ones():
    packer = Packer({"0": 40 * GIB, "1": 80 * GIB, "2": 80 * GIB}, gpus_per_cell=2)
    per_device, small = budget_of(30 * GIB), budget_of(1 * GIB)  # its budget sharded over two (Packer.demand)
    assert packer.place(small).device == "0"
    sharded = packer.place(per_device, devices=2)
    assert sharded == Placement("1,2", None) and sharded.alone  # the two largest empty devices, whole
    assert packer.place(small).device == "0" and packer.place(per_device, devices=2) is None  # "1", "2" held
    packer.release(sharded)
    assert packer.place(None).device == "1"  # unknown: alone on one device, not sharded
    assert packer.place(per_device, devices=2) is None  # two empty devices needed, one left
    with pytest.raises(ValueError):
        Packer({"0": GIB}, gpus_per_cell=2)


def test_an_unknown_prediction_and_a_retry_run_alone():
    packer = Packer({"0": 80 * GIB})
    assert packer.place(None) == Placement("0", None)
    assert packer.place(budget_of(1 * GIB)) is None
    packer = Packer({"0": 80 * GIB})
    packer.place(budget_of(1 * GIB))
    assert packer.place(budget_of(1 * GIB), alone=True) is None  # a retry alone waits for an empty device


def test_cells_start_alone_ones_first_then_largest_first(tmp_path):
    cells = [type("C", (), {"id": name})() for name in "abcde"]
    budgets = {"a": 1, "b": 5, "c": None, "d": 5, "e": 9}
    assert [c.id for c in packing_order(cells, budgets)] == ["c", "e", "b", "d", "a"]  # equal budgets: grid order


def test_the_room_is_asked_of_nvidia_smi_never_of_cuda(monkeypatch):
    import subprocess

    asked = []

    def smi(args, **kwargs):
        asked.append(args)
        out = {"3": "81559, 559", "5": "143771, 0"}[args[2]]
        return subprocess.CompletedProcess(args, 0, out + "\n", "")

    monkeypatch.setattr(subprocess, "run", smi)
    assert local.device_rooms(["3", "5"]) == {"3": 81000 * MIB, "5": 143771 * MIB}
    assert [a[1:3] for a in asked] == [["-i", "3"], ["-i", "5"]]
    monkeypatch.setattr(subprocess, "run", lambda args, **k: subprocess.CompletedProcess(args, 9, "", "no GPU"))
    assert local.device_rooms(["3"]) is None


GPU_0, GPU_1 = "GPU-00000000-0000-4000-8000-000000000000", "GPU-00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize("code, uuid, memory", [(9, GPU_0, "81559, 559"),  # a failing exit, a well-formed answer
                                                (0, f"{GPU_0}\n{GPU_1}", "81559, 559\n81559, 559"),  # two lines
                                                (0, f"{GPU_0}, 5", "81559, 559, 3")])  # more values than asked
def test_both_questions_to_nvidia_smi_take_one_answer_policy(monkeypatch, code, uuid, memory):
    """The room (device_rooms) and the UUID (gpu_ledger.gpu_uuids) are asked through one query (query_gpus): an exit
    status other than 0, or other than one line of the values asked, is no answer for either. Before, the UUID's
    question took an answer whatever nvidia-smi's exit status."""
    import subprocess

    from bench.run.gpu_ledger import gpu_uuids

    def smi(answers: dict[bool, str], code: int):
        return lambda args, **kwargs: subprocess.CompletedProcess(args, code, answers["--query-gpu=uuid" in args]
                                                                  + "\n", "")

    monkeypatch.setattr(subprocess, "run", smi({True: GPU_0, False: "81559, 559"}, 0))
    assert local.device_rooms(["0"]) == {"0": 81000 * MIB} and gpu_uuids(["0"]) == {"0": GPU_0}
    monkeypatch.setattr(subprocess, "run", smi({True: uuid, False: memory}, code))
    assert local.device_rooms(["0"]) is None and gpu_uuids(["0"]) is None


def test_building_a_packed_executor_never_imports_torch():
    """The runner forks cells, so it must never initialise CUDA: choosing the GPUs and asking their room (a fake
    nvidia-smi here) does not even import torch. In a fresh interpreter, as this test's own may have imported it."""
    import subprocess

    code = ("import subprocess, sys\n"
            "subprocess.run = lambda args, **k: subprocess.CompletedProcess(args, 0, '81559, 559\\n', '')\n"
            "from bench.run.executors import local\n"
            "executor = local._build(quiet=True, jobs=1, gpus='all', pack=None, predicted_memory=lambda c: None)\n"
            "assert executor.rooms == {'90': 81000 * 2**20, '91': 81000 * 2**20}, executor.rooms\n"
            "print('torch' in sys.modules)")
    visible = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(NO_GPU)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=visible)
    assert done.stdout.split() == ["False"], done.stderr


def test_pack_must_be_memory_or_off_and_comes_with_gpus():
    with pytest.raises(BadInput, match="--pack 'tight': give one of memory, off") as error:
        local._build(quiet=True, jobs=1, gpus=None, pack="tight")
    assert error.value.where == "--pack"  # the flag is named as where the input was wrong
    with pytest.raises(BadInput, match="--pack places cells on GPUs: give --gpus too"):
        local._build(quiet=True, jobs=2, gpus=None, pack="off")
    assert local._build(quiet=True, jobs=2, gpus=None, pack=None).rooms is None


# Real cell processes, pinned to GPUs no machine has, packed by a stated prediction.

@pytest.fixture
def cells_of(tmp_path):
    def expand(methods: str, seeds: str = "[1]") -> list:
        path = tmp_path / "packing.yaml"
        path.write_text(f"name: packing\nmethod_modules: [tests.faulty_methods]\nmethods: {methods}\n"
                        f"models: [tiny-encoder]\ntasks: [synth-polarity]\nseeds: {seeds}\ntrain: {TRAIN}\n"
                        "cell_timeout_s: 300\n")
        return grid.expand(load_suite(str(path)), threads=1)
    return expand


def packed(rooms: dict[str, int], predicted: dict[str, int | None] | int) -> LocalExecutor:
    """An executor that packs onto fake GPUs: `predicted` peak bytes by method label (or one for all)."""
    def memory(cell):
        peak = predicted if isinstance(predicted, int) else predicted[cell.label]
        return None if peak is None else {"predicted_peak_bytes": peak}

    return LocalExecutor(quiet=True, gpus=list(rooms), rooms=rooms, predicted_memory=memory)


def stored(store: Store) -> dict[str, dict]:
    return {r["cell"]["label"] + f"-s{r['cell']['seed']}": r
            for r in (json.loads(p.read_text()) for p in (store.root / "packing").glob("*.json"))}


def test_three_cells_share_one_gpu_each_held_to_its_budget(cells_of, tmp_path):
    cells = cells_of("[full, lora, bitfit]")
    budget = budget_of(1 * GIB)
    store = Store(tmp_path / "results")
    summary = run_grid(cells, store, packed({NO_GPU[0]: 3 * (budget + CONTEXT_BYTES)}, 1 * GIB), quiet=True)
    assert summary.statuses == {"ok": 3}
    records = stored(store)
    assert {r["env"]["device_index"] for r in records.values()} == {NO_GPU[0]}
    assert {r["env"]["device_budget_bytes"] for r in records.values()} == {budget}
    assert max(r["env"]["cells_beside"] for r in records.values()) >= 1  # started together: they overlapped
    from bench.run.exchange import table

    assert set(table(str(store.root), "packing")["env.device_budget_bytes"]) == {budget}  # exported as recorded


def test_cells_beside_counts_only_the_cells_on_the_same_gpu(cells_of, tmp_path):
    """Two GPUs, room for one cell each: the two cells at once never share a device, so none ran beside another."""
    cells = cells_of("[logged-full]", seeds="[1, 2, 3, 4]")
    room = budget_of(1 * GIB) + CONTEXT_BYTES
    store = Store(tmp_path / "results")
    run_grid(cells, store, packed(dict.fromkeys(NO_GPU, room), 1 * GIB), quiet=True)
    records = stored(store)
    assert len(records) == 4 and {r["env"]["cells_beside"] for r in records.values()} == {0}
    assert {r["env"]["device_index"] for r in records.values()} == set(NO_GPU)


def test_a_packed_cell_that_runs_out_of_memory_is_retried_alone(cells_of, tmp_path):
    log = tmp_path / "builds.log"
    cells = cells_of(f"[full, {{name: fault-oom-at-first, overrides: {{log: '{log}'}}}}]")
    store = Store(tmp_path / "results")
    summary = run_grid(cells, store, packed({NO_GPU[0]: 10 * GIB}, 1 * GIB), quiet=True)
    assert summary.statuses == {"ok": 2}
    assert len(log.read_text().split()) == 2  # built twice: out of memory packed, then alone
    retried = stored(store)["fault-oom-at-first-s1"]
    assert retried["status"] == "ok" and retried["env"]["device_budget_bytes"] is None
    assert retried["env"]["cells_beside"] == 0
    assert not list((store.root / "packing" / ".incoming").glob("*.json"))  # the first attempt's record is gone


def test_a_cell_alone_that_runs_out_of_memory_keeps_its_record(cells_of, tmp_path):
    """No second try where the cell had the whole device: its `oom` record is the answer."""
    log = tmp_path / "builds.log"
    cells = cells_of(f"[{{name: fault-oom-at-first, overrides: {{log: '{log}', times: 5}}}}]")
    store = Store(tmp_path / "results")
    run_grid(cells, store, packed({NO_GPU[0]: 10 * GIB}, {"fault-oom-at-first": None}), quiet=True)
    (record,) = stored(store).values()
    assert record["status"] == "oom" and record["env"]["device_budget_bytes"] is None
    assert len(log.read_text().split()) == 1


def test_a_packed_cell_killed_leaves_the_others_and_the_store_intact(cells_of, tmp_path):
    cells = cells_of("[full, fault-kill, lora]")
    store = Store(tmp_path / "results")
    run_grid(cells[:1], store, LocalExecutor(quiet=True), quiet=True)  # a record from before
    before = (store.root / "packing").joinpath(f"{cells[0].id}.json").read_bytes()
    summary = run_grid(cells, store, packed({NO_GPU[0]: 10 * GIB}, 1 * GIB), quiet=True)
    assert summary.statuses == {"ok": 1, "killed": 1} and summary.skipped == 1
    records = stored(store)
    assert {k: r["status"] for k, r in records.items()} == {"full-s1": "ok", "fault-kill-s1": "killed", "lora-s1": "ok"}
    assert (store.root / "packing").joinpath(f"{cells[0].id}.json").read_bytes() == before
    assert records["fault-kill-s1"]["env"]["device_budget_bytes"] == budget_of(1 * GIB)
    assert not list(Path(store.root / "packing").glob("*.lock"))


def test_the_largest_cell_is_claimed_first(cells_of, tmp_path):
    cells = cells_of("[bitfit, full, lora]")
    executor = packed({NO_GPU[0]: 100 * GIB}, {"bitfit": 1 * GIB, "full": 3 * GIB, "lora": 2 * GIB})
    assert [c.label for c in executor.order(cells)] == ["full", "lora", "bitfit"]
    assert [c.label for c in LocalExecutor(quiet=True, jobs=2).order(cells)] == ["bitfit", "full", "lora"]


def test_a_cell_is_claimed_only_when_it_can_start(cells_of, tmp_path):
    """The runner claims a cell as the executor takes it, and an interrupted runner records every claimed cell
    `interrupted`: so a cell that would have to wait for room is not taken until the room is there."""
    cells = cells_of("[full, lora]")
    events = []

    def handed():
        for cell in cells:
            events.append(("taken", cell.label))
            yield cell

    executor = packed({NO_GPU[0]: budget_of(1 * GIB) + CONTEXT_BYTES}, 1 * GIB)  # room for one cell at a time
    for cell, record in executor.submit(handed(), lambda c: tmp_path / "spool", cells):
        events.append(("done", cell.label))
    assert events == [("taken", "full"), ("done", "full"), ("taken", "lora"), ("done", "lora")]


def test_a_cell_holds_its_allocator_to_its_budget(monkeypatch):
    """The fraction set is budget / the device's memory (at most 1); without CUDA there is nothing to hold."""
    import torch

    from bench.cell.device_budget import hold_to_budget

    set_to = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 80 * GIB}))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: set_to.append((f, d)))
    assert hold_to_budget(20 * GIB) == 0.25 and hold_to_budget(100 * GIB) == 1.0
    assert set_to == [(0.25, 0), (1.0, 0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hold_to_budget(20 * GIB) is None and len(set_to) == 2
    with pytest.raises(ValueError):
        hold_to_budget(0)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_a_cell_past_its_budget_runs_out_of_memory_alone():
    """In a process of its own (the fraction is the process's): 256 MiB of budget, a 512 MiB tensor refused."""
    import subprocess

    code = ("import torch; from bench.cell.device_budget import hold_to_budget; hold_to_budget(256 * 2**20)\n"
            "try:\n    torch.empty(512 * 2**20, dtype=torch.uint8, device='cuda')\nexcept torch.OutOfMemoryError:\n"
            "    print('refused')\nx = torch.empty(128 * 2**20, dtype=torch.uint8, device='cuda'); print('held')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["refused", "held"], done.stderr


def test_gpus_pack_by_memory_unless_told_off_or_nvidia_smi_cannot_say(monkeypatch, capsys):
    import subprocess

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "90,91")
    monkeypatch.setattr(subprocess, "run", lambda args, **k: subprocess.CompletedProcess(args, 0, "81559, 559\n", ""))
    memory = lambda cell: None  # noqa: E731 (the prediction is not asked for while building)
    packed_executor = local._build(quiet=True, jobs=1, gpus="all", pack=None, predicted_memory=memory)
    assert packed_executor.rooms == {"90": 81000 * MIB, "91": 81000 * MIB} and packed_executor.devices == NO_GPU
    assert local._build(quiet=True, jobs=1, gpus="all", pack="off", predicted_memory=memory).rooms is None
    monkeypatch.setattr(subprocess, "run", lambda args, **k: subprocess.CompletedProcess(args, 6, "", "no such GPU"))
    assert local._build(quiet=True, jobs=1, gpus="all", pack="memory", predicted_memory=memory).rooms is None
    said = capsys.readouterr().err
    assert "nvidia-smi did not give every GPU's memory, so one cell runs on each GPU at a time" in said


def halved(cell, shards: int = 1) -> dict:
    """A prediction of 2 GiB on one device, 2 / N GiB on each of N: a cell that fits 3 GiB devices only sharded."""
    return {"predicted_peak_bytes": 2 * GIB // shards}


def test_a_cell_larger_than_any_gpu_runs_sharded_over_gpus_per_cell(tmp_path):
    """Two fake GPUs too small for the cell, --gpus-per-cell 2: the cell runs over both (FSDP2, two ranks on gloo
    here), and every rank computes the same batch's gradients, so its record is the unsharded one's."""
    path = tmp_path / "sharded.yaml"
    path.write_text(f"name: packing\nmethods: [full, lora]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\n"
                    f"seeds: [1]\ntrain: {TRAIN}\ncell_timeout_s: 300\n")
    cells = grid.expand(load_suite(str(path)), threads=1)
    sharded, alone = Store(tmp_path / "sharded"), Store(tmp_path / "alone")
    executor = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 3 * GIB),
                             predicted_memory=halved, gpus_per_cell=2)
    assert run_grid(cells, sharded, executor, quiet=True).statuses == {"ok": 2}
    run_grid(cells, alone, LocalExecutor(quiet=True), quiet=True)
    for label, record in stored(sharded).items():
        assert record["env"]["shards"] == 2 and record["env"]["device_index"] == ",".join(NO_GPU)
        assert record["env"]["device_budget_bytes"] is None and record["env"]["cells_beside"] == 0
        unsharded = stored(alone)[label]
        assert record["params"] == unsharded["params"], label
        assert record["scores"] == unsharded["scores"], label
        # the mean of two equal gradients is exact in floating point: the same steps, bit for bit
        assert record["train"]["final_loss"] == unsharded["train"]["final_loss"], label
        assert record["time"].get("infer_latency_merged_s") is None  # FSDP refuses a merged copy


def test_a_cell_that_saves_its_state_is_refused_sharded_before_it_starts(tmp_path, monkeypatch):
    """A stage, a task other cells start from, or --save-adapters (each gives the cell an adapter_dir,
    bench/cli/run.py: placed): sharded, every rank would write the same files and the adapter is not gathered from
    the shards, so the cell is recorded unsupported, no process started and nothing written."""
    import dataclasses

    path = tmp_path / "sharded.yaml"
    path.write_text(f"name: packing\nmethods: [lora]\nmodels: [tiny-llama]\ntasks: [synth-polarity]\n"
                    f"seeds: [1]\ntrain: {TRAIN}\ncell_timeout_s: 300\n")
    saves = tmp_path / "adapters"
    cells = [dataclasses.replace(c, adapter_dir=str(saves / c.id))
             for c in grid.expand(load_suite(str(path)), threads=1)]
    store = Store(tmp_path / "sharded")
    executor = LocalExecutor(quiet=True, gpus=NO_GPU, rooms=dict.fromkeys(NO_GPU, 3 * GIB),
                             predicted_memory=halved, gpus_per_cell=2)

    def no_cell_process(*args, **kwargs):  # refused at placement: no cell process, so no rank and no model loaded
        raise AssertionError("a cell process was started for a cell refused at placement")

    monkeypatch.setattr(local, "CellProcess", no_cell_process)
    assert run_grid(cells, store, executor, quiet=True).statuses == {"unsupported": 1}
    (record,) = stored(store).values()
    assert "sharded over GPUs 90,91" in record["error"]["message"] and "--save-adapters" in record["error"]["message"]
    assert not saves.exists()
