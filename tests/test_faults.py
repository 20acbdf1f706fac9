"""Fault injection: what a hostile or careless user, a dying process or a second runner can do to a
grid, and what must hold after it: every cell trained at most once per request, nothing written or
deleted outside the store and the report folder, no failure that looks like a result."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace as dataclass_replace
from pathlib import Path

import pytest

from bench.cli import main
from bench.judging import Tolerances
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run import locks
from bench.run.executors.cells import EVIDENCE_LINES, tail
from bench.run.executors.local import LocalExecutor
from bench.run.locks import lock_problem
from bench.run.runner import run_grid
from bench.run.store import Store
from bench.tools.regress import compare as gate_compare
from bench.tools.regress import make_baseline

ROOT = Path(__file__).resolve().parent.parent
TRAIN = "{batch_size: 8, max_steps: 3, max_length: 16, eval_batch_size: 64, max_eval_samples: 32}"


def suite_text(methods: str, name: str = "faults", seeds: str = "[1]", timeout: float = 120) -> str:
    return (f"name: {name}\nmethod_modules: [tests.faulty_methods]\nmethods: {methods}\nmodels: [tiny-encoder]\n"
            f"tasks: [synth-polarity]\nseeds: {seeds}\ntrain: {TRAIN}\ncell_timeout_s: {timeout}\n")


def cli(*args: str, **popen) -> subprocess.Popen:
    """The CLI in a process of its own (a runner that can be killed), run from the repository root."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "CI": "true"}
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def records(results: Path, suite: str = "faults") -> dict[str, dict]:
    return {r["cell"]["label"]: r for r in (json.loads(p.read_text()) for p in (results / suite).glob("*.json"))}


def gone(pid: int, within_s: float = 15) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited, waiting for a parent to reap it
            return True
        time.sleep(0.1)
    return False


def wait_for(predicate, within_s: float = 60):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


# 1. names that escape the store or the report folder

@pytest.mark.parametrize("name", ["../../x", "/abs/path", "..", "''", '"a\\nb"', ".hidden"])
def test_hostile_suite_names_are_refused_before_any_work(write_suite, tmp_path, capsys, name):
    suite = write_suite(suite_text("[full]").replace("name: faults", f"name: {name}"))
    assert main(["run", "--suite", str(suite), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "cannot be a folder name" in capsys.readouterr().err
    assert main(["report", "--suite", "../x", "--results", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()


def test_store_refuses_records_naming_paths(tmp_path):
    record = {"cell": {"suite": "../escape", "id": "abc"}}
    with pytest.raises(Exception, match="suite name"):
        Store(tmp_path / "r").write(record)
    with pytest.raises(Exception, match="cell id"):
        Store(tmp_path / "r").path("ok", "../../etc/x")
    assert not (tmp_path / "escape").exists()


def test_report_removes_only_what_it_wrote(tmp_path, capsys):
    from tests.handmade import survey_records, write_store

    results = write_store(tmp_path / "results", survey_records())
    out = tmp_path / "reports"
    mine = [out / "hand" / "plots" / "my-notes.txt", out / "hand" / "csv" / "mine.csv"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("the user's own file")
    assert main(["report", "--suite", "hand", "--results", str(results), "--out", str(out), "--format", "csv"]) == 0
    generated = sorted((out / "hand" / "csv").glob("*.csv"))
    stale = out / "hand" / "csv" / "a-table-that-is-gone.csv"
    stale.write_text("x")
    manifest = out / "hand" / ".peft-bench-files.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) + ["csv/a-table-that-is-gone.csv"]))
    assert main(["report", "--suite", "hand", "--results", str(results), "--out", str(out), "--format", "csv"]) == 0
    assert all(p.read_text() == "the user's own file" for p in mine)
    assert mine[1] in generated and not stale.exists() and sorted((out / "hand" / "csv").glob("*.csv")) == generated


# 2. two runners, duplicate cells

def test_two_runners_train_each_cell_once(tmp_path, write_suite):
    log = tmp_path / "trainings.log"
    suite = write_suite(suite_text(f"[{{name: logged-full, overrides: {{log: '{log}', sleep_s: 0.3}}}}]",
                                   seeds="[1, 2, 3, 4]"))
    results = tmp_path / "results"
    runners = [cli("run", "--suite", str(suite), "--results", str(results)) for _ in range(2)]
    outputs = [r.communicate(timeout=300) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], outputs
    assert len(log.read_text().split()) == 4  # trainings, not records: each cell once
    assert len(list((results / "faults").glob("*.json"))) == 4
    assert "run by another runner" in outputs[0][0] + outputs[1][0]


def test_repeated_seeds_make_one_cell(write_suite, capsys):
    suite = write_suite(suite_text("[full]"))
    assert main(["run", "--suite", str(suite), "--seeds", "1,1", "--dry-run"]) == 0
    assert "1 cell," in capsys.readouterr().out


# 3. stale locks

def test_lock_staleness(tmp_path):
    lock = tmp_path / "c.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "started": locks.process_start(os.getpid())}))
    assert lock_problem(lock) is None  # this live process
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "started": -5}))
    assert "another process" in lock_problem(lock)  # PID 1 is alive, but is not the lock's owner
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 1}))
    assert lock_problem(lock) is None  # another host's runner with a fresh heartbeat
    old = time.time() - locks.LEASE_S - 5
    os.utime(lock, (old, old))
    assert "heartbeat" in lock_problem(lock)  # any host: the lease ran out
    lock.write_text("{not json")  # (written now: a fresh heartbeat)
    assert lock_problem(lock) is None  # perhaps still being written: stale only by its heartbeat
    lock.write_text("")
    assert lock_problem(lock) is None
    os.utime(lock, (old, old))
    assert "heartbeat" in lock_problem(lock)


def test_a_lock_of_garbage_is_stale_only_by_its_heartbeat(tmp_path):
    """A lock file of bytes that are not text, or JSON nested past Python's recursion limit (planted in a shared
    store): before the fix lock_problem raised UnicodeDecodeError or RecursionError out of every runner that met it,
    and steal the latter; now it is a lock that cannot be read, stale only by its heartbeat, and --steal-locks takes
    it."""
    lock = tmp_path / "c.lock"
    for garbage in (b"\xff\xfe{", b"[" * 100_000):
        lock.write_bytes(garbage)
        assert lock_problem(lock) is None
        old = time.time() - locks.LEASE_S - 5
        os.utime(lock, (old, old))
        assert "heartbeat" in lock_problem(lock)
        assert locks.steal(lock) == {"unreadable": True} and not lock.exists()


def _hold_every_lock(root: str, ids: list[str], start, granted, done) -> None:
    store = Store(root)
    start.wait()
    granted.put([i for i in ids if store.acquire("race", i) is not None])
    # held until both have tried every cell: a process that ended holds nothing (its locks are stale, even while it
    # is a zombie its parent has not waited for), so the other may then take them, rightly
    done.wait(120)


def test_two_processes_never_both_hold_a_cells_lock(tmp_path):
    """Two processes race to lock the same 400 cells, keeping what they get: no cell is granted to both (a lock
    created empty and filled in afterwards was once taken for a stale one, and granted twice)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ids = [f"cell{i}" for i in range(400)]
    start, granted, done = ctx.Event(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_hold_every_lock, args=(str(tmp_path), ids, start, granted, done)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    first, second = granted.get(timeout=120), granted.get(timeout=120)
    done.set()
    for p in procs:
        p.join(timeout=60)
    assert set(first) & set(second) == set()
    assert sorted(first + second) == sorted(ids)  # and every cell went to one of them


def test_a_released_lock_that_was_stolen_is_left_to_its_new_owner(tmp_path):
    store = Store(tmp_path)
    claim = store.acquire("s", "c1")
    store.steal("s", "c1")
    lock_text = json.dumps({"host": "elsewhere", "pid": 42, "started": 1})
    store.lock_path("s", "c1").write_text(lock_text)  # another runner's, after its --steal-locks
    claim.release()
    assert store.lock_path("s", "c1").read_text() == lock_text


def test_spool_files_name_their_runner():
    from bench.run.executors.cells import spool_files

    assert {p.name for p in spool_files(Path("x"), "abc")} == {f"abc.{os.getpid()}.{s}" for s in ("json", "log",
                                                                                               "partial")}


def test_steal_locks_takes_a_live_foreign_lock_and_says_so(tmp_path, write_suite, capsys):
    suite = write_suite(suite_text("[fault-raise]"))
    cell = grid.expand(load_suite(str(suite)))[0]
    store = Store(tmp_path / "results")
    lock = store.lock_path(cell.suite, cell.id)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 42, "started": 1}))
    assert main(["run", "--suite", str(suite), "--results", str(store.root), "--quiet"]) == 0
    assert "1 run by another runner" in capsys.readouterr().out and store.read(cell.suite, cell.id) is None
    assert main(["run", "--suite", str(suite), "--results", str(store.root), "--quiet", "--steal-locks"]) == 0
    captured = capsys.readouterr()
    assert "stole the lock" in captured.err and "held by host elsewhere, pid 42" in captured.err
    assert store.read(cell.suite, cell.id)["status"] == "failed" and not lock.exists()


# 4. corrupt store files

@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"created_at": 5}', "{broken"])
def test_a_corrupt_record_file_is_kept_aside_and_replaced(tmp_path, write_suite, capsys, content):
    suite = write_suite(suite_text("[fault-raise]"))
    cell = grid.expand(load_suite(str(suite)))[0]
    store = Store(tmp_path / "results")
    path = store.path(cell.suite, cell.id)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert main(["run", "--suite", str(suite), "--results", str(store.root), "--quiet"]) == 0
    assert "not usable records" in capsys.readouterr().err
    assert store.read(cell.suite, cell.id)["status"] == "failed"
    assert [p.read_text() for p in (path.parent / "history").glob("*.json")] == [content]


def test_report_skips_a_record_of_the_wrong_shape(tmp_path, capsys):
    from tests.handmade import survey_records, write_store

    recs = survey_records()
    recs[0]["scores"]["metrics"] = [1, 2]
    results = write_store(tmp_path / "results", recs)
    assert main(["report", "--suite", "hand", "--results", str(results), "--out", str(tmp_path / "o"),
                 "--format", "md"]) == 0
    assert "scores.metrics is not an object" in capsys.readouterr().err


# 5-7. cells that fail, diverge, crash, are killed, hang, or run out of memory

def test_every_way_a_cell_can_fail_is_recorded_as_such(tmp_path, write_suite):
    suite = load_suite(str(write_suite(suite_text(
        "[fault-raise, fault-crash, fault-kill, fault-exhaust, {name: fault-nan, train: {lr: 1.0e-3}}, "
        "fault-detached]"))))
    store = Store(tmp_path / "results")
    summary = run_grid(grid.expand(suite), store, LocalExecutor(quiet=True), quiet=True)
    got = records(store.root)
    assert {k: r["status"] for k, r in got.items()} == {
        "fault-raise": "failed", "fault-crash": "failed", "fault-kill": "killed", "fault-exhaust": "oom",
        "fault-nan": "diverged", "fault-detached": "failed"}
    crash = got["fault-crash"]["error"]
    assert crash["type"] == "CellCrashed" and "exit code 3" in crash["message"] and crash["exit_code"] == 3
    assert "the last words of a crashing cell" in crash["traceback"]  # the child's output is the evidence
    assert any("last output: the last words of a crashing cell" in line for line in summary.problems)
    assert "SIGKILL" in got["fault-kill"]["error"]["message"] and got["fault-kill"]["error"]["signal"] == "SIGKILL"
    assert got["fault-nan"]["train"]["diverged_at_step"] == 3  # poisoned after step 2
    assert got["fault-nan"]["scores"]["metrics"] == {}
    assert got["fault-raise"]["error"]["message"] == "injected failure in build"
    detached = got["fault-detached"]  # it would have trained everything else and been ranked
    message = detached["error"]["message"]
    assert detached["error"]["type"] == "NoGradient" and "1 trainable parameter tensor(s)" in message
    assert ": ignored_prefix." in message and detached["scores"]["metrics"] == {}
    assert not list((store.root / "faults" / ".incoming").iterdir())  # nothing left in the spool


def test_the_evidence_is_the_last_100_lines_of_the_cells_output(tmp_path):
    """A progress bar's carriage returns count as line ends; undecodable bytes do not stop the reading."""
    log = tmp_path / "cell.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(150)) + b"bar 1%\rbar 50%\rbar 99%\xff\n")
    kept = tail(log).splitlines()
    assert EVIDENCE_LINES == 100 and len(kept) == 100
    assert kept[0] == "line 53" and kept[-3:] == ["bar 1%", "bar 50%", "bar 99%\ufffd"]
    log.write_bytes(b"")
    assert tail(log) is None and tail(tmp_path / "never-written.log") is None


def test_a_hanging_cell_times_out(tmp_path, write_suite):
    suite = load_suite(str(write_suite(suite_text("[fault-hang]", timeout=2))))
    run_grid(grid.expand(suite), Store(tmp_path), LocalExecutor(quiet=True), quiet=True)
    (record,) = records(tmp_path).values()
    assert record["status"] == "timeout"


def test_a_hanging_cells_own_children_die_with_it_at_its_timeout(tmp_path, write_suite):
    """The cell's whole process group is killed, not only the cell: a child it started does not outlive it."""
    log = tmp_path / "children.log"
    suite = load_suite(str(write_suite(suite_text(f"[{{name: fault-spawn-hang, overrides: {{log: '{log}'}}}}]",
                                                   timeout=3))))
    run_grid(grid.expand(suite), Store(tmp_path / "r"), LocalExecutor(quiet=True), quiet=True)
    (record,) = records(tmp_path / "r").values()
    assert record["status"] == "timeout"
    (child,) = [int(p) for p in log.read_text().split()]
    assert gone(child), "the cell's child outlived the cell's timeout"


def test_a_cell_killed_mid_training_keeps_what_it_measured(tmp_path, write_suite):
    """`train.elapsed_s` is bounded by its definition, not a clock here: training reports its progress once
    PROGRESS_EVERY_S have passed since it began, so the last report is at least that. The executor kills the cell
    once it sees the deadline passed (cell.timeout_s after its process started), up to POLL_S after it, and the
    last report came before the kill; training's clock starts only after the process has imported torch and built
    the model, which takes longer than POLL_S, so the report is within cell.timeout_s of that clock's start."""
    from bench.cell.train import PROGRESS_EVERY_S

    text = suite_text("[fault-slow]", timeout=8).replace("max_steps: 3", "max_steps: 100")
    (cell,) = grid.expand(load_suite(str(write_suite(text))))
    run_grid([cell], Store(tmp_path), LocalExecutor(quiet=True), quiet=True)
    (record,) = records(tmp_path).values()
    assert record["status"] == "timeout"
    assert record["params"]["total"] > 0 and record["memory"]["weights_bytes"] == 4 * record["params"]["total"]
    progress = record["train"]
    assert 1 <= progress["steps"] < 100 and progress["last_loss"] > 0
    assert PROGRESS_EVERY_S <= progress["elapsed_s"] <= cell.timeout_s


def test_a_diverged_cell_is_never_a_result(tmp_path):
    from bench.report.aggregate import aggregate
    from bench.run.store import load_frame
    from tests.handmade import survey_records, write_store

    recs = survey_records()
    diverged = next(r for r in recs if r["status"] == "ok" and r["cell"]["label"] == "lora")
    diverged.update(status="diverged", error={"type": "Diverged", "message": "non-finite at step 3"})
    diverged["scores"]["metrics"]["accuracy"] = 100.0  # even a perfect score must not count
    write_store(tmp_path / "results", recs)
    agg = aggregate(load_frame(tmp_path / "results", "hand")[0])
    cell = diverged["cell"]
    row = agg[(agg.label == "lora") & (agg.model == cell["model"]) & (agg.task == cell["task"])].iloc[0]
    assert row["statuses"] == {"diverged": 1} and row["score_mean"] != 100.0
    baseline = make_baseline("hand", survey_records(), {})
    verdict = gate_compare(baseline, recs, Tolerances())
    assert verdict.failed and any(f.figure == "status" and f.new == "diverged" for f in verdict.findings)


def test_kill_9_of_the_runner_takes_its_cells_along_and_a_rerun_resumes(tmp_path, write_suite):
    log = tmp_path / "trainings.log"
    suite = write_suite(suite_text(f"[{{name: logged-full, overrides: {{log: '{log}', sleep_s: 600}}}}]"))
    runner = cli("run", "--suite", str(suite), "--results", str(tmp_path / "results"))
    cell_pid = int(wait_for(lambda: log.exists() and log.read_text().split()[:1] and log.read_text().split()[0]))
    server_pid = int(Path(f"/proc/{cell_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    runner.send_signal(signal.SIGKILL)
    runner.communicate()
    assert gone(cell_pid) and gone(server_pid), "the cell or its fork server outlived the runner"
    (cell,) = grid.expand(load_suite(str(suite)))
    store = Store(tmp_path / "results")
    assert lock_problem(store.lock_path(cell.suite, cell.id)) == f"process {runner.pid} is gone"
    fast = grid.expand(load_suite(str(suite)))[0].method_config | {"sleep_s": 0.0}  # the same cell, no sleep
    summary = run_grid([dataclass_replace(cell, method_config=fast)], store, LocalExecutor(quiet=True), quiet=True)
    # the lock was taken over
    assert summary.statuses == {"ok": 1} and store.read(cell.suite, cell.id)["status"] == "ok"


def test_sigterm_stops_the_grid_and_records_the_running_cell_as_interrupted(tmp_path, write_suite):
    log = tmp_path / "trainings.log"
    suite = write_suite(suite_text(f"[{{name: logged-full, overrides: {{log: '{log}', sleep_s: 600}}}}]"))
    results = tmp_path / "results"
    runner = cli("run", "--suite", str(suite), "--results", str(results))
    cell_pid = int(wait_for(lambda: log.exists() and log.read_text().split()[:1] and log.read_text().split()[0]))
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 130 and "Run the same command again to resume" in err
    (record,) = records(results).values()
    assert record["status"] == "interrupted" and gone(cell_pid)
    assert not list((results / "faults").glob("*.lock"))


def test_a_record_finished_after_its_runner_died_is_adopted_not_retrained(tmp_path, write_suite):
    log = tmp_path / "trainings.log"
    suite = write_suite(suite_text(f"[{{name: logged-full, overrides: {{log: '{log}'}}}}]"))
    cell = grid.expand(load_suite(str(suite)))[0]
    results = tmp_path / "results"
    from bench.record import finish, new_record

    leftover = finish(new_record(cell), "ok")
    incoming = results / "faults" / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / f"{cell.id}.999999.json").write_text(json.dumps(leftover))
    run = cli("run", "--suite", str(suite), "--results", str(results))
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0 and "1 adopted" in out and "adopted faults/" in err
    assert not log.exists() and records(results)["logged-full"]["created_at"] == leftover["created_at"]
    assert not list(incoming.iterdir())


# 8. bad input refused before any work

@pytest.mark.parametrize("change,message", [
    (("methods: [full]", "methods: []"), "'methods' is empty"),
    (("models: [tiny-encoder]", "models: []"), "'models' is empty"),
    (("seeds: [1]", "seeds: []"), "'seeds' is empty"),
    (("seeds: [1]", "seeds: [-1]"), "outside 0 .. 2^32-1"),
    (("seeds: [1]", "seeds: [4294967296]"), "outside 0 .. 2^32-1"),
    (("seeds: [1]", f"seeds: {list(range(20000))}"), "more than 1000"),
    (("methods: [full]", "methods: [{name: lora, overrides: {r: -3}}]"), "'r' must be positive"),
    (("batch_size: 8", "batch_size: 100000000000"), "a typo?"),
])
def test_bad_suites_exit_2_naming_the_line(write_suite, capsys, change, message):
    suite = write_suite(suite_text("[full]").replace(*change))
    assert main(["run", "--suite", str(suite), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(suite) in err


def test_bad_flags_and_model_folders_exit_2(tmp_path, write_suite, capsys):
    from tests.handmade import survey_records, write_store

    results = write_store(tmp_path / "results", survey_records())
    assert main(["compare", str(results), str(results), "--score-tol", "-1"]) == 2
    assert "--score-tol must be a number >= 0" in capsys.readouterr().err
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    suite = write_suite(suite_text("[full]").replace("[tiny-encoder]", f"['{folder}']"))
    assert main(["run", "--suite", str(suite), "--dry-run"]) == 2
    assert "config.json is not readable JSON" in capsys.readouterr().err


# 9-10. messages that name what is wrong

def test_a_store_of_unreadable_records_says_so(tmp_path, capsys):
    (tmp_path / "results" / "hand").mkdir(parents=True)
    (tmp_path / "results" / "hand" / "a.json").write_text(json.dumps({"schema_version": 0}))
    assert main(["report", "--suite", "hand", "--results", str(tmp_path / "results"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "1 file(s)" in err and "of another schema version" in err and "no usable records" in err


def test_a_data_file_error_names_the_file_and_line(tmp_path):
    from bench.errors import BadInput
    from bench.tasks.datafiles import read_file

    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n' * 40 + '{"a": \n')
    with pytest.raises(BadInput, match=rf"{path}:41: not a JSON object per line"):
        read_file(path)
