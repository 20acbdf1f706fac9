"""The machine's GPU ledger (bench/run/gpu_ledger.py) where the host or other users get in its way: /proc mounted
hidepid, a ledger that cannot be used for a step, lines any local user may write, a file replaced under a runner,
a runner's loop standing still, and a host without /dev/shm."""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import time
from pathlib import Path

import pytest

from bench.run import gpu_ledger
from bench.run.gpu_ledger import Ledger
from bench.run.ledger_files import ledger_folder
from bench.run.locks import LEASE_S, process_start
from tests.test_gpu_ledger import BUDGET, GIB, UUIDS, entry, held_elsewhere, ledger_file, shared

HIDDEN = 2**22 + 7  # above any pid_max: no process of ours, so what /proc and kill say of it is the test's


def test_a_process_proc_hides_is_judged_by_its_lease_never_counted_dead(tmp_path, monkeypatch):
    """/proc mounted hidepid: another user's runner reads as no process, yet kill(pid, 0) says it exists
    (EPERM); only "no such process" (ESRCH) is dead."""
    real_kill = os.kill

    def kill(pid: int, signal: int) -> None:
        if pid == HIDDEN:
            raise PermissionError(1, "Operation not permitted")
        real_kill(pid, signal)

    monkeypatch.setattr(os, "kill", kill)
    renewed = entry(HIDDEN, 1, "renewed", 3 * GIB)
    stale = entry(HIDDEN, 1, "stale", GIB, beat=time.time() - LEASE_S - 1)
    gone = entry(2**22 + 1, 1, "gone", 5 * GIB)  # ESRCH
    path = ledger_file(tmp_path / "ledger", [renewed, stale, gone])
    assert process_start(HIDDEN) is None
    assert held_elsewhere(tmp_path / "ledger") == 3 * GIB
    assert [json.loads(line)["cell"] for line in path.open()] == ["renewed"]


def test_a_runner_that_could_not_use_the_ledger_for_a_step_clears_its_entries_when_it_can(tmp_path, monkeypatch,
                                                                                        capsys):
    """A stall (a runner stopped mid-step) costs one blind decision, never the ledger for the rest of the run:
    its entries of cells that ended would block the other runners for as long as it lives."""
    monkeypatch.setattr(gpu_ledger, "LOCK_WAIT_S", 0.2)
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    ended = packing.place(BUDGET, cell="ended")
    path = tmp_path / "ledger" / f"{UUIDS['0']}.ledger"
    with path.open() as stalled:
        fcntl.flock(stalled, fcntl.LOCK_EX)
        blind = packing.place(BUDGET, cell="blind")
    assert blind.device == "0" and packing.lost
    assert "packing blind to other runners on these GPUs until it can be again" in capsys.readouterr().err
    packing.release(ended, "ended")
    assert not packing.lost and "in use again" in capsys.readouterr().err
    assert [json.loads(line)["cell"] for line in path.open()] == ["blind"]  # placed blind, yet entered since

    with path.open() as stalled:  # the release's own step stalls: the next renewal writes what is left
        fcntl.flock(stalled, fcntl.LOCK_EX)
        packing.release(blind, "blind")
    assert packing.lost and "blind" in path.read_text()
    packing.renew()
    assert path.read_text() == "" and not packing.lost


def test_while_the_ledger_is_lost_a_step_tries_its_lock_briefly(tmp_path, monkeypatch):
    """One step finds the lock held (LOCK_WAIT_S, here made long); while it stays held, each later step tries it
    for LOST_LOCK_WAIT_S only, so the runner's loop (a step per cell it starts or ends) is not slowed to a crawl."""
    monkeypatch.setattr(gpu_ledger, "LOCK_WAIT_S", 0.5)
    monkeypatch.setattr(gpu_ledger, "LOST_LOCK_WAIT_S", 0.01)
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    packing.place(BUDGET, cell="first")
    waits = []
    real_lock = Ledger._lock
    monkeypatch.setattr(Ledger, "_lock", lambda self, fd, device, wait: waits.append(wait) or
                        real_lock(self, fd, device, wait))
    with (tmp_path / "ledger" / f"{UUIDS['0']}.ledger").open() as stalled:
        fcntl.flock(stalled, fcntl.LOCK_EX)
        for cell in ("second", "third", "fourth"):
            packing.place(BUDGET, cell=cell)
    assert waits == [0.5, 0.01, 0.01] and packing.lost


def test_lines_any_user_may_write_never_crash_a_runner_nor_its_terminal(tmp_path, capsys):
    parent, started = os.getppid(), process_start(os.getppid())
    spoiled = [entry(parent, started, "huge", 10**400), entry(parent, started, "peta", 2**50 + 1),
               entry(0, started, "group"), entry(-1, started, "everyone"), entry(2**63, started, "wide"),
               entry(parent, started, "nan", beat=math.nan), entry(parent, started, "inf", beat=-math.inf),
               entry(parent, started, "long beat", beat=10**400)]  # JSON, and float() of it overflows
    path = ledger_file(tmp_path / "ledger", [*spoiled, entry(parent, started, "\x1b[2Jbell\x07\nname", None)])
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    assert packing.place(BUDGET, cell="mine") is None and packing.blocked  # only the last, held whole, counts
    said = capsys.readouterr().err
    assert f"GPU 0: ?[2Jbell??name of pid {parent} (whole)" in said and "\x1b" not in said and "\x07" not in said
    kept = [json.loads(line) for line in path.read_text().splitlines()]  # the whole one, and the waiter's claim
    assert [(line["cell"], "waits" in line) for line in kept] == [("\x1b[2Jbell\x07\nname", False), ("mine", True)]


def test_a_cell_name_from_the_ledger_is_printed_without_format_characters(tmp_path, capsys):
    """Bidi controls (U+202E RIGHT-TO-LEFT OVERRIDE, the isolates U+2066..U+2069, U+200E/U+200F marks) and other
    format characters (Unicode category Cf: U+200B ZERO WIDTH SPACE, U+FEFF) reorder or hide what follows them on
    a terminal, so a name could print as another; a line separator (U+2028) breaks the line. Before the fix only
    C0/C1 controls were replaced."""
    parent, started = os.getppid(), process_start(os.getppid())
    name = "sst2\u202egpj.exe\u2066a\u2069\u200e\u200f\u200b\ufeff\u2028b\u061c"
    ledger_file(tmp_path / "ledger", [entry(parent, started, name, None)])
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    assert packing.place(BUDGET, cell="mine") is None and packing.blocked
    said = capsys.readouterr().err
    assert f"GPU 0: sst2?gpj.exe?a??????b? of pid {parent} (whole)" in said, said


def test_a_ledger_file_replaced_while_a_runner_waits_for_its_lock_is_read_anew(tmp_path, monkeypatch):
    """Locked, a file its name no longer gives is no ledger: the runners after it read and write the new one."""
    parent, started = os.getppid(), process_start(os.getppid())
    path = ledger_file(tmp_path / "ledger", [])
    real_lock, replaced = Ledger._lock, []

    def lock_after_a_replace(self, fd, device, wait):
        if not replaced:  # while this runner waited: the file unlinked, made again, another runner's entry in it
            path.unlink()
            ledger_file(tmp_path / "ledger", [entry(parent, started, "theirs", 2 * GIB)])
            replaced.append(True)
        real_lock(self, fd, device, wait)

    monkeypatch.setattr(Ledger, "_lock", lock_after_a_replace)
    assert held_elsewhere(tmp_path / "ledger") == 2 * GIB and replaced


@pytest.mark.parametrize("removed", [("0",), ("1",), ("0", "1")])
def test_ledger_files_removed_during_a_step_are_each_named_and_get_the_runners_entries(tmp_path, capsys, removed):
    """A runner's step over two GPUs writes each file, then checks each is still the one its name gives: a file
    removed (or replaced) meanwhile lost what was written to it, and the other runners read the new one. Every such
    file is named, every other file keeps this step's entries, and the next step writes them into the new files.
    Before the fix the check stopped at the first such file: the files after it went unwritten in that step (a cell
    started on them missing there until the next), and the others replaced unnamed."""
    folder, rooms = tmp_path / "ledger", {"0": 80 * GIB, "1": 80 * GIB}
    first, second = shared(folder, rooms), shared(folder, rooms)
    paths = {device: folder / f"{UUIDS[device]}.ledger" for device in rooms}
    first.where(BUDGET)
    real_place = first.packer.place

    def place_as_files_are_removed(*args):
        for device in removed:
            paths[device].unlink()  # a tidy user's rm, mid-step
        if len(removed) == len(rooms):  # every file new, so unlocked: another runner steps meanwhile
            assert second.place(BUDGET, cell="theirs") is not None
        return real_place(*args)

    def cells(device: str) -> list[str]:
        return sorted(json.loads(line)["cell"] for line in paths[device].open())

    first.packer.place = place_as_files_are_removed
    assert first.place(None, alone=True, devices=2, cell="mine").device in ("0,1", "1,0") and first.lost
    said = capsys.readouterr().err
    assert "removed or replaced during this runner's step" in said
    assert [device for device in rooms if str(paths[device]) in said] == list(removed), said
    assert all("mine" in cells(device) for device in rooms if device not in removed)
    first.renew()
    assert not first.lost and all("mine" in cells(device) for device in rooms)
    assert sorted(cell for device in rooms for cell in cells(device)) == \
        sorted(["mine", "mine"] + (["theirs"] if len(removed) == len(rooms) else []))


def test_a_failed_write_after_the_decision_leaves_the_runner_waiting_not_failing(tmp_path, monkeypatch):
    """A runner kept out by another's cell decides to wait; its write then fails (a full /dev/shm): it still waits
    for the other (blocked), since the scheduler fails a runner with nothing running that is not blocked."""
    import errno

    other = shared(tmp_path / "ledger", {"0": 80 * GIB})
    other.place(None, alone=True, cell="theirs, whole")
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    assert packing.place(BUDGET, cell="mine") is None and packing.blocked

    def full(fd, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "ftruncate", full)
    assert packing.place(BUDGET, cell="mine") is None and packing.blocked and packing.lost


def test_the_renewing_thread_outlives_a_step_that_raises(tmp_path, monkeypatch, capsys):
    """Whatever a shared file makes a step raise, the thread says so once and renews again afterwards."""
    monkeypatch.setattr(gpu_ledger, "HEARTBEAT_S", 0.0)
    monkeypatch.setattr(gpu_ledger, "RENEW_CHECK_S", 0.02)
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    packing.place(BUDGET, cell="long")
    calls, step = [], packing._step

    def failing_once(decide):
        calls.append(1)
        if len(calls) == 1:
            raise OverflowError("a value the ledger did not foresee")
        return step(decide)

    monkeypatch.setattr(packing, "_step", failing_once)
    with packing.renewing():
        deadline = time.monotonic() + 30
        while len(calls) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert "the GPU ledger could not be renewed (OverflowError" in capsys.readouterr().err


def test_entries_are_renewed_while_the_runners_loop_stands_still(tmp_path, monkeypatch):
    """The runner's loop stops at each record it hands over (stored, sent to trackers): a thread renews."""
    monkeypatch.setattr(gpu_ledger, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(gpu_ledger, "RENEW_CHECK_S", 0.05)
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    packing.place(BUDGET, cell="long")
    path = tmp_path / "ledger" / f"{UUIDS['0']}.ledger"
    beat = json.loads(path.read_text())["beat"]
    with packing.renewing():
        deadline = time.monotonic() + 30
        while json.loads(path.read_text() or "{}").get("beat", beat) <= beat:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert json.loads(path.read_text())["cell"] == "long"


def test_without_dev_shm_the_ledger_is_one_folder_whatever_each_users_tmpdir(monkeypatch):
    monkeypatch.delenv(gpu_ledger.LEDGER_ENV, raising=False)
    monkeypatch.setattr(os.path, "isdir", lambda path: False)  # no /dev/shm
    monkeypatch.setattr(tempfile, "tempdir", "/scratch/job-123")  # a per-job TMPDIR
    assert ledger_folder() == Path("/tmp/peft-bench-gpu-ledger")
