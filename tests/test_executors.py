"""The executor contract (bench/run/executors/base.py): a new executor is one file that registers itself with its
flags; and the Slurm executor's requests, computed from a cell's prediction by hand."""

from __future__ import annotations

import math

import pytest

from bench.cli import main
from bench.errors import BadInput
from bench.run.executors import EXECUTORS, make_executor
from bench.run.executors.base import ExecutorSpec, Option, register
from bench.run.executors.cells import failure_record


class Recording:
    """An executor that runs nothing: each cell gets a `killed` record, and what it was asked is kept."""

    name = "recording"
    threads_per_cell = 1

    def __init__(self, quiet: bool, batch: int):
        self.slots, self.seen = batch, []

    def submit(self, cells, spool, planned=None):
        for cell in cells:
            self.seen.append(cell.id)
            yield cell, failure_record(cell, "killed", "Recorded", "the recording executor runs nothing")


@pytest.fixture
def recording(monkeypatch):
    built = []

    def build(quiet: bool, recording_batch: int) -> Recording:
        if recording_batch < 1:
            raise BadInput("--recording-batch must be at least 1", "--recording-batch")
        built.append(Recording(quiet, recording_batch))
        return built[-1]

    monkeypatch.delitem(EXECUTORS, "recording", raising=False)
    spec = register(ExecutorSpec("recording", "runs nothing, records what it was given", build,
                                 (Option("--recording-batch", int, "cells handed over at once", 2),)))
    yield built
    assert EXECUTORS.pop("recording") is spec


def test_a_registered_executor_is_a_flag_of_run_with_its_own_options(recording, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "recording (runs nothing, records what it was given)" in " ".join(out.split())
    assert "--recording-batch" in out and "recording: cells handed over at once (default 2)" in " ".join(out.split())
    assert main(["run", "--suite", "ci", "--methods", "lora", "--models", "tiny-encoder", "--results",
                 str(tmp_path), "--executor", "recording", "--recording-batch", "3", "--quiet"]) == 0
    (executor,) = recording
    assert executor.slots == 3 and len(executor.seen) == 1
    assert "killed" in capsys.readouterr().err  # its record reached the store like any executor's


@pytest.mark.parametrize("args, flag, says", [
    (["--executor", "recording", "--jobs", "2"], "--jobs", "an option of --executor local, not of recording"),
    (["--recording-batch", "2"], "--recording-batch", "an option of --executor recording, not of local"),
    (["--executor", "recording", "--recording-batch", "0"], "--recording-batch", "at least 1"),
    (["--executor", "recordin"], "--executor", "did you mean 'recording'"),
])
def test_a_flag_of_another_executor_is_refused_before_any_work(recording, args, flag, says, tmp_path, capsys):
    code = main(["run", "--suite", "ci", "--results", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and says in err, err
    assert not recording or not recording[0].seen
    assert not any(tmp_path.iterdir())


def test_registering_twice_or_one_flag_with_two_meanings_is_refused(recording):
    with pytest.raises(ValueError, match="registered twice"):
        register(ExecutorSpec("recording", "again", lambda quiet: None))
    with pytest.raises(ValueError, match="--recording-batch: other and recording give it different types"):
        register(ExecutorSpec("other", "x", lambda quiet, recording_batch: None,
                              (Option("--recording-batch", float, "a float this time"),)))
    assert "other" not in EXECUTORS


def test_every_shipped_executor_declares_the_contract():
    assert {"local", "ray", "slurm"} <= set(EXECUTORS)
    local = make_executor("local", quiet=True, given={"jobs": 2})
    assert local.slots == 2 and local.threads_per_cell is None and callable(local.submit)


# ---- Slurm: what one cell's job asks for ----

def _slurm(monkeypatch, **options):
    pytest.importorskip("submitit")
    from bench.run.executors import slurm

    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")  # no cluster needed to plan a job
    def predicted(cell, step_device="cuda"):
        ASKED.append(step_device)
        return PREDICTED

    return slurm, make_executor("slurm", quiet=True, given=options, predicted_memory=predicted)


ASKED: list[str] = []  # the step device each prediction was asked for


PREDICTED = {"weights_bytes": 3 * 2**20, "optimizer_bytes": 6 * 2**20, "step_peak_bytes": 7 * 2**20,
             "predicted_peak_bytes": 16 * 2**20}


def _cell():
    from bench.plan import grid
    from bench.plan.suite import load_suite

    return next(c for c in grid.expand(load_suite("ci")) if c.method == "lora" and c.model.name == "tiny-encoder")


def test_a_slurm_job_asks_for_the_cells_predicted_memory_and_deadline(monkeypatch):
    slurm, executor = _slurm(monkeypatch, cpus_per_cell=2, slurm_partition="gpu", slurm_account="lab")
    cell = _cell()
    wanted = executor.resources(cell)
    # the ci suite's cell_timeout_s is 300: 300 s + the 300 s start margin = 10 minutes
    assert wanted["time"] == math.ceil((300 + 300) / 60) == 10
    # CPU: the whole predicted peak is host memory; 2 GiB of process beside it, the peak × 1.25
    assert wanted["mem"] == f"{math.ceil((2 * 2**30 + 1.25 * 16 * 2**20) / 2**20)}M" == "2068M"
    assert wanted["cpus_per_task"] == 2 and executor.threads_per_cell == 2
    assert wanted["partition"] == "gpu" and wanted["account"] == "lab" and "gpus_per_node" not in wanted
    assert wanted["job_name"] == f"peft-bench-ci-{cell.id}"
    _, on_gpu = _slurm(monkeypatch, gpus_per_cell=1)
    wanted = on_gpu.resources(cell)  # on a GPU only the weights pass through host memory
    assert wanted["gpus_per_node"] == 1 and wanted["mem"] == f"{math.ceil(2048 + 1.25 * 3)}M"
    # a CPU job's step is predicted as a CPU runs it (fp32, its kernels), a GPU job's as a GPU does
    assert ASKED[-2:] == ["cpu", "cuda"]
    _, fixed = _slurm(monkeypatch, mem_per_cell=1.5)
    assert fixed.resources(cell)["mem"] == "1536M"
    assert slurm.host_megabytes(None, on_gpu=False) is None  # unknown: the partition's default, no guess


@pytest.mark.parametrize("options, flag", [({"gpus_per_cell": 0.5}, "--gpus-per-cell"),
                                           ({"cpus_per_cell": 0}, "--cpus-per-cell"),
                                           ({"slurm_max_jobs": 0}, "--slurm-max-jobs"),
                                           ({"mem_per_cell": 0}, "--mem-per-cell")])
def test_slurm_options_are_checked_before_any_job(monkeypatch, options, flag):
    with pytest.raises(BadInput) as caught:
        _slurm(monkeypatch, **options)
    assert caught.value.where == flag


@pytest.mark.parametrize("log, state, status", [
    ("slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-12-07T03:00:00 DUE TO TIME LIMIT ***", "TIMEOUT",
     "timeout"),
    ("slurmstepd: error: Detected 1 oom_kill event in StepId=12.batch.", "OUT_OF_MEMORY", "oom"),
    ("slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-12-07T03:00:00 ***", "CANCELLED", "killed"),
    ("Traceback: a crash of Python itself", None, "killed"),
])
def test_how_slurm_ended_a_job_is_read_from_its_log_without_accounting(log, state, status):
    pytest.importorskip("submitit")
    from bench.run.executors import slurm

    assert slurm._state_in_log(log) == state
    assert slurm.ENDED_BY_SLURM.get(state, "killed") == status
