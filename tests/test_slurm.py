"""`--executor slurm` against a real Slurm: the one-node cluster of scripts/slurm/up.sh (slurmctld, slurmd,
slurmdbd, munge on localhost). Each guarantee of the local executor, on jobs: the same records, a timeout, a job
Slurm cancels, an interrupted runner (its jobs cancelled, its cells `interrupted`) and a runner killed -9 (its job
finishes, and the next run adopts the record without training again).

Skipped where no cluster answers (`SLURM_CONF` unset or `sinfo` failing); `make slurm-test` starts one and runs
these; CI sets PEFT_BENCH_REQUIRE_SLURM=1, so there they run or fail, never skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.test_faults import cli, records, suite_text, wait_for


def _cluster_answers() -> bool:
    if not os.environ.get("SLURM_CONF"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


if not _cluster_answers():
    if os.environ.get("PEFT_BENCH_REQUIRE_SLURM") == "1":
        raise RuntimeError("PEFT_BENCH_REQUIRE_SLURM=1 but no Slurm cluster answers: start one with "
                           "scripts/slurm/up.sh and export the SLURM_CONF it prints")
    pytest.skip("no Slurm cluster (scripts/slurm/up.sh starts one)", allow_module_level=True)
pytest.importorskip("submitit")


def _queued(name_part: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if name_part in line]


# The faulty methods' cells ask for 1 GB: predicting their memory would build them in the runner, which the
# sleeping one would do for its whole sleep (and log the runner's pid as a training).
FIXED_MEMORY = ("--mem-per-cell", "1")


def _sleeping(tmp_path, seconds: float) -> str:
    """A faulty-methods entry that trains for `seconds`, logging its pid first."""
    return f"[{{name: logged-full, overrides: {{log: '{tmp_path / 'trainings.log'}', sleep_s: {seconds}}}}}]"


def _slurm_run(*args: str) -> subprocess.CompletedProcess:
    runner = cli("run", "--executor", "slurm", "--quiet", *args)
    out, err = runner.communicate(timeout=600)
    return subprocess.CompletedProcess(runner.args, runner.returncode, out, err)


def test_a_grid_on_slurm_gives_the_records_a_local_run_gives(tmp_path, capsys):
    """The same cells locally and as Slurm jobs: `compare` finds every exact figure and score equal."""
    from bench.cli import main

    cells = ["--suite", "ci", "--models", "tiny-encoder", "--methods", "lora,bitfit,adapter-houlsby"]
    done = _slurm_run(*cells, "--results", str(tmp_path / "slurm"))
    assert done.returncode == 0, done.stderr
    assert main(["run", *cells, "--results", str(tmp_path / "local"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "local"), str(tmp_path / "slurm"), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert len(compared["cells"]) == 3 and not compared["only_a"] and not compared["only_b"]
    assert compared["flagged"] == 0, compared
    slurm = records(tmp_path / "slurm", "ci")
    assert {r["status"] for r in slurm.values()} == {"ok"}
    assert all(r["env"]["cells_beside"] is None and r["env"]["threads"] == 1 for r in slurm.values())
    assert not (tmp_path / "slurm" / "ci" / ".slurm").exists()  # each job's files removed with its record stored


def test_a_cell_past_its_deadline_in_a_job_is_a_timeout(tmp_path, write_suite):
    suite = write_suite(suite_text(_sleeping(tmp_path, 600), timeout=8))
    done = _slurm_run("--suite", str(suite), "--results", str(tmp_path), *FIXED_MEMORY)
    assert done.returncode == 0, done.stderr
    (record,) = records(tmp_path).values()
    assert record["status"] == "timeout" and "cell_timeout_s" in record["error"]["message"]
    assert not _queued(record["cell"]["id"])


def test_a_job_slurm_cancels_is_recorded_killed_with_slurms_reason(tmp_path, write_suite):
    suite = write_suite(suite_text(_sleeping(tmp_path, 600)))
    runner = cli("run", "--executor", "slurm", "--quiet", "--suite", str(suite), "--results", str(tmp_path),
                 *FIXED_MEMORY)
    (job,) = wait_for(lambda: _queued("peft-bench-faults-"), within_s=120)
    subprocess.run(["scancel", job], check=True, timeout=30)
    _, err = runner.communicate(timeout=180)
    assert runner.returncode == 0, err
    (record,) = records(tmp_path).values()
    assert record["status"] == "killed" and record["error"]["type"] == "SlurmJobEnded"
    assert f"Slurm job {job} ended (CANCELLED)" in record["error"]["message"]


def test_an_interrupted_runner_cancels_its_jobs_and_records_them_interrupted(tmp_path, write_suite):
    suite = write_suite(suite_text(_sleeping(tmp_path, 600), seeds="[1, 2]"))
    runner = cli("run", "--executor", "slurm", "--quiet", "--suite", str(suite), "--results", str(tmp_path),
                 *FIXED_MEMORY)
    wait_for(lambda: len(_queued("peft-bench-faults-")) == 2, within_s=120)
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 130, err
    assert {r["status"] for r in records(tmp_path).values()} == {"interrupted"}
    assert wait_for(lambda: not _queued("peft-bench-faults-"), within_s=60)


def test_a_job_outliving_its_killed_runner_is_adopted_by_the_next_run(tmp_path, write_suite):
    """kill -9 of the runner leaves its job running (Slurm's, not the runner's child): the job writes its record
    into the runner's spool, and the next run stores it instead of training the cell again."""
    log = tmp_path / "trainings.log"
    suite = write_suite(suite_text(_sleeping(tmp_path, 4)))
    runner = cli("run", "--executor", "slurm", "--quiet", "--suite", str(suite), "--results", str(tmp_path / "r"),
                 *FIXED_MEMORY)
    wait_for(lambda: log.exists() and log.read_text().strip(), within_s=120)  # the cell is training in its job
    runner.kill()
    runner.communicate()
    wait_for(lambda: not _queued("peft-bench-faults-"), within_s=120)
    (spooled,) = (tmp_path / "r" / "faults" / ".incoming").glob("*.json")  # finished after its runner died
    first = json.loads(spooled.read_text())
    done = _slurm_run("--suite", str(suite), "--results", str(tmp_path / "r"), *FIXED_MEMORY)
    assert done.returncode == 0, done.stderr
    assert "adopted faults/" in done.stderr and "1 adopted from an interrupted run" in done.stdout
    (record,) = records(tmp_path / "r").values()
    assert record["status"] == "ok" and len(log.read_text().split()) == 1  # trained once, in the first job
    assert record == first  # the first job's record stored as it was written, not a second job's


def test_a_request_no_node_can_meet_stops_the_run_before_any_work(tmp_path):
    """500 GB a cell on this node's 21 GB: Slurm's own answer to a test submission, exit 2, no job, no record. The
    suite has a name of its own: its jobs' names are then this test's alone, where the ci suite's were also those
    of the grid another test submits at the same moment (make test runs two at once)."""
    suite = tmp_path / "refused.yaml"
    suite.write_text("name: slurm-refused\nmethods: [lora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                     "seeds: [1]\ntrain: {batch_size: 4, max_steps: 2, max_length: 16}\n")
    done = _slurm_run("--suite", str(suite), "--results", str(tmp_path / "results"), "--mem-per-cell", "500")
    assert done.returncode == 2 and "Slurm would refuse the job of" in done.stderr and "--mem=512000M" in done.stderr
    assert not (tmp_path / "results" / "slurm-refused").exists() and not _queued("peft-bench-slurm-refused-")
