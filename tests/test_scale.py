"""Scale-out: several cells at once (`--jobs`, `--gpus`), Ray, stores merged from several machines,
exports, and the cost of a grid before it runs."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from bench import figures
from bench.cli import main
from bench.errors import BadInput
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.executors import local as executors
from bench.run.executors import make_executor
from bench.run.executors.local import LocalExecutor, Overlaps
from bench.run.runner import run_grid
from bench.run.store import Store

TRAIN = "{batch_size: 8, max_steps: 4, max_length: 16, eval_batch_size: 64, max_eval_samples: 64}"
# 6 cells: 3 methods × 2 seeds on the tiny encoder
SUITE = (f"name: scale\nmethods: [full, lora, bitfit]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
         f"seeds: [1, 2]\ntrain: {TRAIN}\ncell_timeout_s: 300\n")


@pytest.fixture
def six_cells(tmp_path):
    path = tmp_path / "scale.yaml"
    path.write_text(SUITE)
    return grid.expand(load_suite(str(path)), threads=1)


def by_id(results: Path, suite: str = "scale") -> dict[str, dict]:
    return {r["cell"]["id"]: r for r in (json.loads(p.read_text()) for p in (results / suite).glob("*.json"))}


def determined(record: dict) -> dict:
    """What must not depend on how cells were scheduled: every exact or versioned figure, and the scores."""
    out = {key: record[fig.section][fig.name] for key, fig in figures.FIGURES.items()
           if fig.determined and fig.recorded}
    return {**out, "scores": record["scores"], "status": record["status"]}


def test_two_jobs_give_the_records_of_one_job_with_two_cells_at_once(six_cells, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_grid(six_cells, Store(one), LocalExecutor(quiet=True), quiet=True)
    summary = run_grid(six_cells, Store(two), LocalExecutor(quiet=True, jobs=2), quiet=True)
    assert summary.statuses == {"ok": 6}
    a, b = by_id(one), by_id(two)
    assert a.keys() == b.keys() and len(a) == 6
    for cell_id in a:
        assert determined(a[cell_id]) == determined(b[cell_id]), cell_id
    assert {r["env"]["cells_beside"] for r in a.values()} == {0}
    beside = [r["env"]["cells_beside"] for r in b.values()]
    assert max(beside) == 1 and all(n in (0, 1) for n in beside)  # never more than the other slot's cell
    assert all(r["env"]["device_index"] is None and r["env"]["threads"] == 1 for r in b.values())


def test_cells_beside_counts_the_most_at_one_moment(monkeypatch):
    clock = iter([0, 1, 2, 3, 4, 10, 11, 12, 13, 14])
    monkeypatch.setattr(executors.time, "monotonic", lambda: next(clock))
    spans = Overlaps()
    spans.start("a")  # 0
    spans.start("b")  # 1
    assert spans.end("b") == 1  # 2: a ran beside b
    spans.start("c")  # 3
    assert spans.end("a") == 1  # 4: b and then c ran beside a, never both at once
    spans.start("d")  # 10
    spans.start("e")  # 11
    assert spans.end("c") == 2  # 12: d and e at once


def test_threads_are_shared_between_the_cells_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    path = tmp_path / "scale.yaml"
    path.write_text(SUITE)
    suite = load_suite(str(path))
    assert {c.threads for c in grid.expand(suite, concurrent=1)} == {8}
    assert {c.threads for c in grid.expand(suite, concurrent=3)} == {2}
    assert {c.threads for c in grid.expand(suite, threads=5, concurrent=3)} == {5}  # asked for: as asked


def test_gpus_numbered_by_nvidia_smi_are_pinned_in_its_order(monkeypatch):
    """nvidia-smi numbers GPUs along the PCI bus; CUDA, by default, fastest first: the cells must read the
    numbers as nvidia-smi gave them."""
    import subprocess

    listing = "GPU 0: NVIDIA L4 (UUID: GPU-a)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)\n"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # restored (or removed) after the test
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listing, ""))
    assert executors.parse_gpus("all") == ["0", "1"]
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_gpus_pin_each_cell_process_to_its_gpu(six_cells, tmp_path, monkeypatch):
    """On any machine: the cell process sees CUDA_VISIBLE_DEVICES as its slot's GPU (the cells here run
    on CPU, so no GPU is needed to check the pinning), one cell per GPU at a time."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "")  # restored after the test
    monkeypatch.delenv("CUDA_DEVICE_ORDER")
    assert executors.visible_gpus() == ["3", "5"]
    assert executors.parse_gpus("all") == ["3", "5"] and executors.parse_gpus("5") == ["5"]
    assert "CUDA_DEVICE_ORDER" not in os.environ  # the user's own numbers keep the user's order
    seen = tmp_path / "seen"
    cells = [c for c in six_cells if c.label == "full"]
    from dataclasses import replace

    probe = [replace(c, method_modules=("tests.faulty_methods",), method="visible-gpus-full",
                     method_config={"log": str(seen)}) for c in cells]
    records = [r for _, r in LocalExecutor(quiet=True, gpus=["3", "5"]).submit(probe, lambda c: tmp_path / "spool")]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert sorted(seen.read_text().split()) == ["3", "5"]
    assert sorted(r["env"]["device_index"] for r in records) == ["3", "5"]


@pytest.mark.parametrize("args, flag", [
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "2", "--gpus", "all"], "--jobs"),
    (["--gpus", "7"], "--gpus"),
    (["--cpus-per-cell", "2"], "--cpus-per-cell"),
    (["--executor", "kubernetes"], "--executor"),
    (["--executor", "ray", "--jobs", "2"], "--jobs"),
    (["--slurm-max-jobs", "2"], "--slurm-max-jobs"),
    (["--executor", "slurm", "--gpus-per-cell", "0.5"], "--gpus-per-cell"),
    (["--executor", "slurm", "--mem-per-cell", "0"], "--mem-per-cell"),
    (["--executor", "slurm", "--slurm-max-jobs", "0"], "--slurm-max-jobs"),
])
def test_bad_scale_flags_exit_2_before_any_work(args, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    code = main(["run", "--suite", "smoke", "--results", str(tmp_path), *args])
    assert code == 2
    assert flag in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_ray_missing_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BadInput, match=r"peft-bench\[ray\]"):
        make_executor("ray")


# ---- stores from several machines ----

def test_merge_and_export_round_trip(six_cells, tmp_path, capsys):
    first, second, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    cells = six_cells[:3]
    run_grid(cells[:2], Store(first), LocalExecutor(quiet=True), quiet=True)
    run_grid(cells[1:], Store(second), LocalExecutor(quiet=True), quiet=True)
    shared = cells[1].id
    same = json.loads(Store(first).path("scale", shared).read_text())
    Store(second).write(same)  # the overlapping cell, identical in both (the copy went to b's history)
    conflicting = json.loads(Store(second).path("scale", cells[2].id).read_text())
    older = {**conflicting, "status": "failed", "created_at": "2020-01-01T00:00:00+00:00",
             "error": {"type": "RuntimeError", "message": "x", "where": None, "traceback": None}}
    Store(first).write(older)  # the same cell recorded differently on the first machine: a failure, older
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.json")}

    assert main(["results", "merge", str(first), str(second), "--into", str(merged)]) == 0
    out = capsys.readouterr()
    assert f"conflict scale/{cells[2].id}" in out.err and "kept ok" in out.err
    assert "3 records added, 1 identical ones kept once, 1 conflicts" in out.out
    assert {p: p.read_bytes() for p in before} == before  # sources only read
    result = by_id(merged)
    assert set(result) == {c.id for c in cells}
    assert result[cells[2].id] == conflicting  # ok beats failed
    history = [json.loads(p.read_text()) for p in (merged / "scale" / "history").glob(f"{cells[2].id}.*.json")]
    assert older in history  # the loser is kept
    assert main(["results", "merge", str(first), str(second), "--into", str(merged)]) == 0  # again: nothing new
    assert "0 records added" in capsys.readouterr().out

    for fmt, read in (("csv", pd.read_csv), ("jsonl", lambda p: pd.read_json(p, lines=True)),
                      ("parquet", pd.read_parquet)):
        out_file = tmp_path / "reports" / f"x.{fmt}"
        assert main(["results", "export", "--suite", "scale", "--results", str(merged), "--format", fmt,
                     "--out", str(out_file)]) == 0
        frame = read(out_file)
        assert sorted(frame["id"]) == sorted(c.id for c in cells)
        for record in result.values():
            row = frame[frame["id"] == record["cell"]["id"]].iloc[0]
            assert row["params.trainable"] == record["params"]["trainable"]
            assert math.isclose(row["score"], record["scores"]["metrics"]["accuracy"])
            assert json.loads(row["config"]) == record["cell"]["config"]


def test_merge_refuses_what_is_not_a_store(tmp_path, capsys):
    assert main(["results", "merge", str(tmp_path / "nowhere"), "--into", str(tmp_path / "m")]) == 2
    assert "no results store" in capsys.readouterr().err
    assert main(["results", "merge", str(tmp_path), "--into", str(tmp_path)]) == 2


# ---- the cost of a grid before it runs ----

def test_dry_run_prints_flops_and_time_from_the_estimate(tmp_path, capsys):
    from bench.tools.estimate import estimate

    text = SUITE.replace("max_steps: 4", "epochs: 0.5").replace("seeds: [1, 2]", "seeds: [1]")
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    assert main(["run", "--suite", str(path), "--dry-run", "--tflops", "2", "--jobs", "2",
                 "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    steps = math.ceil(0.5 * 4000 / 8)  # synth-polarity has 4000 training rows
    total = 0
    for method in ("full", "lora", "bitfit"):
        step = estimate("tiny-encoder", method, 8, 16)["flops"]["train_step"]
        line = next(line for line in out if f"method={method} " in line)
        assert f"train FLOPs {steps * step:.3g} ({steps} steps)" in line
        total += steps * step
    assert out[-1].startswith(f"3 cells, {total:.3g} training FLOPs")
    assert "on 2 slots at once" in out[-1] and "--tflops 2" in out[-1]
    assert not (tmp_path / "r").exists()


def test_a_dry_run_prices_each_shape_once_and_again_from_the_cache(write_suite, tmp_path, monkeypatch, capsys):
    """The grid's shapes are priced once (two seeds, one shape), cached on disk, and a second dry-run prints the
    same plan from the cache without counting a step; an entry of other package versions is not used."""
    import bench.tools.plan_cost as plan_cost
    from bench.tasks import cache

    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    path = write_suite("name: once\nmethods: [lora, bitfit]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                       "seeds: [1, 2]\ntrain: {max_steps: 10, batch_size: 4, max_length: 16}\n")
    args = ["run", "--suite", str(path), "--dry-run", "--results", str(tmp_path / "r")]
    monkeypatch.setattr(plan_cost, "pricing_workers", lambda: 2)  # two processes forked to price the shapes
    assert main(args) == 0
    first = capsys.readouterr().out
    assert len(cache.entries("plan")) == 2
    cache.clear()
    monkeypatch.setattr(plan_cost, "pricing_workers", lambda: 1)  # in this process, where counting is seen
    counted, original = [], plan_cost._step_flops
    monkeypatch.setattr(plan_cost, "_step_flops", lambda cell: counted.append(cell.method) or original(cell))
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert sorted(counted) == ["bitfit", "lora"] and len(cache.entries("plan")) == 2
    assert main(args) == 0
    assert capsys.readouterr().out == first and len(counted) == 2
    real_version = plan_cost._cache_key
    monkeypatch.setattr(plan_cost, "_cache_key", lambda cell: {**real_version(cell), "versions": {"torch": "0"}})
    assert main(args) == 0 and capsys.readouterr().out == first and len(counted) == 4


def test_dry_run_prices_checkpointed_cells_as_they_run(write_suite, tmp_path, capsys):
    """A suite with gradient checkpointing: each cell's step is estimated checkpointed (the recomputed
    forwards counted), and a cell that will be unsupported under it is priced as unknown, with the reason.
    Methods whose resolved config names their implementation or revision are priced too (they once were
    `unknown setting 'implementation'`)."""
    from bench.tools.estimate import estimate

    path = write_suite("name: gc\nmethods: [lora, prefix-tuning-peft, prefix-tuning, prompt-tuning]\n"
                       "models: [tiny-gpt2]\n"
                       "tasks: [synth-digits]\ntrain: {max_steps: 10, batch_size: 8, max_length: 16, "
                       "gradient_checkpointing: true}\n")
    assert main(["run", "--suite", str(path), "--dry-run", "--tflops", "2", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    step = estimate("tiny-gpt2", "lora", 8, 16, gradient_checkpointing=True)["flops"]["train_step"]
    assert step > estimate("tiny-gpt2", "lora", 8, 16)["flops"]["train_step"]
    assert f"train FLOPs {10 * step:.3g} (10 steps)" in next(line for line in out if "method=lora " in line)
    refused = next(line for line in out if "method=prefix-tuning-peft " in line)
    assert "train FLOPs unknown" in refused and "gradient checkpointing" in refused
    for method in ("prefix-tuning", "prompt-tuning"):
        step = estimate("tiny-gpt2", method, 8, 16, gradient_checkpointing=True)["flops"]["train_step"]
        assert f"train FLOPs {10 * step:.3g} (10 steps)" in next(line for line in out if f"method={method} " in line)


def test_a_method_that_trains_nothing_costs_no_training_flops(write_suite, tmp_path, capsys):
    """Zero-shot and in-context learning are evaluated as applied: 0 training FLOPs (they were priced as
    training), and the grid's total is the trained cells' alone."""
    from bench.tools.estimate import estimate

    path = write_suite("name: nt\nmethods: [zero-shot, icl, lora]\nmodels: [tiny-t5]\ntasks: [synth-polarity]\n"
                       "train: {max_steps: 10, batch_size: 8, max_length: 16, shots: 4}\n")
    assert main(["run", "--suite", str(path), "--dry-run", "--tflops", "2", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    for method in ("zero-shot", "icl"):
        assert "train FLOPs 0 (trains nothing)" in next(line for line in out if f"method={method} " in line)
    lora = 10 * estimate("tiny-t5", "lora", 8, 16)["flops"]["train_step"]
    assert out[-1].startswith(f"3 cells, {lora:.3g} training FLOPs")


@pytest.mark.parametrize("model, task, cap, passes", [
    ("tiny-encoder", "synth-polarity", 64, 1),  # a classifier: one pass per row, max_eval_samples rows of 500
    # rank classification on an encoder-decoder: half a pass (the encoder) once, half per answer option (the
    # decoder): negative, positive
    ("tiny-t5", "synth-polarity", None, 0.5 + 0.5 * 2),
    ("tiny-t5", "synth-choice", None, 0.5 + 0.5 * 2),  # per-row options: the template's two answers
    ("tiny-gpt2", "synth-digits", None, 1 + 12 / 16),  # generation: the prompt, then 12 tokens' share of 16
])
def test_evaluation_is_priced_by_its_forward_passes(write_suite, tmp_path, capsys, model, task, cap, passes):
    """Each cell's evaluation FLOPs against a closed form: its rows (n_eval, or max_eval_samples) × passes per
    row × the estimate's forward FLOPs of one sequence at the cell's max_length; zero-shot is priced with the
    pretrained model's forward (it trains nothing)."""
    from bench.tasks.registry import builtin_tasks
    from bench.tools.estimate import estimate

    cap_line = f", max_eval_samples: {cap}" if cap else ""
    path = write_suite(f"name: ev\nmethods: [lora, zero-shot]\nmodels: [{model}]\ntasks: [{task}]\n"
                       f"train: {{max_steps: 2, batch_size: 4, max_length: 16{cap_line}}}\n")
    if model == "tiny-encoder":  # a classifier has no zero-shot: its head is new
        path.write_text(path.read_text().replace("[lora, zero-shot]", "[lora]"))
    assert main(["run", "--suite", str(path), "--dry-run", "--tflops", "2", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = min(builtin_tasks()[task].source["n_eval"], cap or 10**9)
    for method in ["lora"] + (["zero-shot"] if model != "tiny-encoder" else []):
        forward = estimate(model, "zero-shot" if method == "zero-shot" else method, 4, 16)["flops"]
        expected = round(rows * passes * forward["forward_per_example"])
        line = next(line for line in out if f"method={method} " in line)
        assert f"eval FLOPs {expected:.3g} ({rows} rows × " in line, line
    assert "evaluation FLOPs" in out[-1]


def test_dry_run_rate_is_measured_by_the_suites_records(six_cells, tmp_path, capsys):
    from bench.tools.plan_cost import measured_rate

    store = Store(tmp_path)
    run_grid(six_cells[:2], store, LocalExecutor(quiet=True), quiet=True)
    records = list(by_id(tmp_path).values())
    rate, overhead, n = measured_rate(store, "scale")
    rates = sorted(r["time"]["train_flops_per_s"] for r in records)
    assert n == 2 and math.isclose(rate, sum(rates) / 2)
    assert math.isclose(overhead, sum(r["time"]["load_s"] + r["time"]["eval_s"] for r in records) / 2)


# ---- Ray ----

def _ray_executor():
    pytest.importorskip("ray", reason="Ray is installed by the `ray` and `dev` extras")
    from bench.run.executors.ray import RayExecutor

    return RayExecutor(quiet=True, local_cpus=2)


def test_a_ray_address_nobody_answers_at_exits_2_before_any_work(tmp_path, capsys):
    _ray_executor()
    assert main(["run", "--suite", "smoke", "--results", str(tmp_path / "r"), "--executor", "ray",
                 "--ray-address", "127.0.0.1:1"]) == 2
    assert "--ray-address: cannot join a Ray cluster at 127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_ray_runs_the_grid_as_the_local_executor_does_and_survives_a_lost_worker(six_cells, tmp_path):
    """One local Ray instance with 2 CPUs: the 6-cell grid gives the local executor's records; then a
    cell whose Ray worker is killed mid-cell gives a `killed` record and the grid goes on."""
    ray = _ray_executor()
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_grid(six_cells, Store(local), LocalExecutor(quiet=True), quiet=True)
    home = Path.home() / ".ray"
    before = sorted(home.rglob("*")) if home.exists() else None
    from dataclasses import replace

    doomed = replace(six_cells[0], id="doomedcell01", method="fault-kill-worker", method_config={},
                     method_modules=("tests.faulty_methods",))
    summary = run_grid([*six_cells, doomed], Store(remote), ray, quiet=True)
    assert summary.statuses == {"ok": 6, "killed": 1}, summary.problems
    a, b = by_id(local), by_id(remote)
    for cell_id in a:
        assert determined(a[cell_id]) == determined(b[cell_id]), cell_id
    lost = b["doomedcell01"]
    assert lost["error"]["type"] == "WorkerLost" and "Ray worker" in lost["error"]["message"]
    assert {r["env"]["threads"] for r in b.values() if r["status"] == "ok"} == {1}
    assert (sorted(home.rglob("*")) if home.exists() else None) == before  # nothing written to ~/.ray
    rerun = run_grid([*six_cells, doomed], Store(remote), ray, quiet=True)  # resumes as locally
    assert rerun.skipped == 7 and not rerun.statuses


def test_sigterm_with_two_jobs_records_both_running_cells_interrupted_and_kill_9_takes_them_along(tmp_path,
                                                                                                  write_suite):
    from tests.test_faults import cli, gone, suite_text, wait_for

    log = tmp_path / "trainings.log"
    suite = write_suite(suite_text(f"[{{name: logged-full, overrides: {{log: '{log}', sleep_s: 600}}}}]",
                                   seeds="[1, 2, 3]"))
    results = tmp_path / "results"

    def two_started() -> list[int]:
        pids = log.read_text().split() if log.exists() else []
        return [int(p) for p in pids] if len(pids) == 2 else []

    runner = cli("run", "--suite", str(suite), "--results", str(results), "--jobs", "2")
    cells = wait_for(two_started)
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    statuses = sorted(json.loads(p.read_text())["status"] for p in (results / "faults").glob("*.json"))
    assert statuses == ["interrupted", "interrupted"]  # the third never started: no record
    assert all(gone(pid) for pid in cells) and not list((results / "faults").glob("*.lock"))

    log.unlink()
    runner = cli("run", "--suite", str(suite), "--results", str(results), "--jobs", "2")
    cells = wait_for(two_started)  # the two interrupted cells run again
    runner.send_signal(signal.SIGKILL)
    runner.communicate()
    assert all(gone(pid) for pid in cells), "a cell outlived its runner"


def test_ray_sigterm_records_the_running_cell_interrupted_and_kill_9_leaves_nothing_behind(tmp_path, write_suite,
                                                                                          monkeypatch):
    """The local executor's guarantees on Ray: SIGTERM gives exit 130 and an `interrupted` record (Ray's own
    handler once won: exit 1, no record); after kill -9 of the runner, the local Ray instance's processes and its
    session folder are gone within seconds (they lingered for a minute, the folder for good)."""
    _ray_executor()
    import shutil
    import tempfile

    from tests.test_faults import cli, gone, records, suite_text, wait_for

    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the runner makes the Ray instance's folder
    log = tmp_path / "trainings.log"
    suite = write_suite(suite_text(f"[{{name: logged-full, overrides: {{log: '{log}', sleep_s: 600}}}}]"))
    results = tmp_path / "results"

    def started() -> int | None:
        pids = log.read_text().split() if log.exists() else []
        return int(pids[0]) if pids else None

    runner = cli("run", "--suite", str(suite), "--results", str(results), "--executor", "ray")
    cell = wait_for(started, within_s=120)
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 130, err
    (record,) = records(results).values()
    assert record["status"] == "interrupted" and gone(cell)
    log.unlink()
    runner = cli("run", "--suite", str(suite), "--results", str(results), "--executor", "ray")
    cell = wait_for(started, within_s=120)
    runner.kill()
    runner.communicate()

    def cleaned() -> bool:
        from bench.run.executors.ray_watchdog import _cmdline

        leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(tmp).encode() in _cmdline(p)]
        return not leftovers and not list(tmp.glob("peft-bench-ray-*"))

    try:
        assert wait_for(cleaned, within_s=20) and gone(cell)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_planning_process_that_initialised_cuda_prices_in_itself(monkeypatch, write_suite, tmp_path):
    """Forked workers only while CUDA is untouched here (QLoRA's bitsandbytes asks for the device on a GPU box)."""
    import torch

    import bench.tools.plan_cost as plan_cost

    forked = []
    monkeypatch.setattr(plan_cost, "_priced_on_workers", lambda cells, workers: forked.append(workers) or [])
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    path = write_suite("name: cuda\nmethods: [lora, bitfit]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                       "train: {max_steps: 10, batch_size: 4, max_length: 16}\n")
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(plan_cost, "pricing_workers", lambda: 2)
    assert main(["run", "--suite", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 0
    assert forked == []


def test_a_named_gpu_prices_at_its_measured_rate(write_suite, tmp_path, capsys):
    """--gpu h200: the full fine-tuning rate docs/measurements/gpu-perf-2026-11-30.md measured (35.1 % of 989.4)."""
    from bench.tools.plan_cost import GPU_RATES

    assert GPU_RATES["h200"][0] == pytest.approx(347.3e12, rel=1e-3)
    path = write_suite("name: g\nmethods: [lora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                       "train: {max_steps: 2, batch_size: 4, max_length: 16}\n")
    assert main(["run", "--suite", str(path), "--dry-run", "--gpu", "h200", "--results", str(tmp_path / "r")]) == 0
    assert "at 347 TFLOP/s per cell (--gpu h200: H200 SXM" in capsys.readouterr().out
    assert main(["run", "--suite", str(path), "--dry-run", "--gpu", "h200", "--tflops", "2",
                 "--results", str(tmp_path)]) == 2
    assert "--gpu and --tflops both give the rate" in capsys.readouterr().err


def test_a_plan_cache_key_names_the_packages_the_method_declares(write_suite, monkeypatch):
    """QLoRA's price comes from the twin of bitsandbytes' 4-bit layer: a cached price of another bitsandbytes version
    must not be used (the key named torch, transformers and peft only). A package not installed keys as null."""
    import importlib.metadata as md

    from bench.tools import plan_cost

    pytest.importorskip("bitsandbytes")
    path = write_suite("name: k\nmethods: [qlora, lora, {compose: [qlora, adapter-houlsby]}]\nmodels: [tiny-encoder]\n"
                       "tasks: [synth-polarity]\ntrain: {max_steps: 10}\n")
    cells = {c.method: c for c in grid.expand(load_suite(str(path)), threads=1)}
    assert set(plan_cost._cache_key(cells["lora"])["versions"]) == {"torch", "transformers", "peft"}
    for method in ("qlora", "compose(qlora+adapter-houlsby)"):  # a composition's: its parts' packages
        assert plan_cost._cache_key(cells[method])["versions"]["bitsandbytes"] == md.version("bitsandbytes")
    real = md.version

    def without_bitsandbytes(name):
        if name == "bitsandbytes":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "version", without_bitsandbytes)
    assert plan_cost._cache_key(cells["qlora"])["versions"]["bitsandbytes"] is None
