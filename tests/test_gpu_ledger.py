"""The machine's GPU ledger (bench/run/gpu_ledger.py): runners in real processes racing on the same fake GPUs, a
runner killed with -9, garbage and planted links in the ledger's folder, and a packed runner waiting for another's
room. Fake GPUs: UUIDs no machine has, rooms stated; the ledger in a folder of the test's own."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.errors import BadInput
from bench.run.gpu_ledger import LEDGER_ENV, MAX_BYTES, Ledger, Shared, gpu_uuids
from bench.run.ledger_files import ledger_folder
from bench.run.locks import HEARTBEAT_S, LEASE_S, process_start
from bench.run.packing import Packer, footprint
from tests.test_faults import ROOT

GIB = 1024**3
UUIDS = {"0": "GPU-00000000-0000-4000-8000-000000000000", "1": "GPU-00000000-0000-4000-8000-000000000001"}
BUDGET = 2 * GIB  # a footprint of 3 GiB with its CUDA context
ROOMS = {"0": 3 * footprint(BUDGET), "1": 2 * footprint(BUDGET)}


def shared(folder: Path, rooms: dict[str, int] = ROOMS, blind: bool = False) -> Shared:
    return Shared(Packer(rooms), None if blind else Ledger({d: UUIDS[d] for d in rooms}, folder))


def count(counter: Path, device: str, change: int) -> None:
    """Add `change` bytes to what the racers hold of `device` now, and keep the most it ever held, in one file."""
    with open(counter, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        held = json.loads(f.read() or "{}")
        now, most = held.get(device, [0, 0])
        held[device] = [now + change, max(most, now + change)]
        f.seek(0)
        f.truncate()
        f.write(json.dumps(held))


def race(folder: str, counter: str, go: str, blind: bool, rounds: int = 15) -> None:
    """One runner: each round it places as many cells as fit (up to 4), holds them a moment, releases them. What it
    holds is counted after it is placed and before it is released, so the counter never runs ahead of the ledger.
    It says it is ready (a file of its pid beside `go`) and starts when `go` exists."""
    packing = shared(Path(folder), blind=blind)
    (Path(go).parent / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    for round_ in range(rounds):
        held = []
        deadline = time.monotonic() + 30
        while len(held) < 4 and time.monotonic() < deadline:
            cell = f"{os.getpid()}-{round_}-{len(held)}"
            placement = packing.place(BUDGET, cell=cell)
            if placement is None:
                if held:
                    break
                time.sleep(0.002)
                continue
            count(Path(counter), placement.device, footprint(BUDGET))
            held.append((placement, cell))
        time.sleep(0.02)
        for placement, cell in held:
            count(Path(counter), placement.device, -footprint(BUDGET))
            packing.release(placement, cell)


def racer(tmp_path: Path, blind: bool, go: Path) -> subprocess.Popen:
    code = (f"from tests.test_gpu_ledger import race; race({str(tmp_path / 'ledger')!r}, "
            f"{str(tmp_path / 'counter')!r}, {str(go)!r}, {blind})")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("blind", [False, True], ids=["ledger", "blind"])
def test_two_runners_in_two_processes_never_pack_past_a_room(tmp_path, blind):
    """Blind (each runner its own Packer, as before the ledger) they pass a room: the check can fail."""
    go = tmp_path / "go"
    runners = [racer(tmp_path, blind, go) for _ in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{r.pid}").exists() for r in runners):  # both up before either starts
        assert time.monotonic() < deadline and all(r.poll() is None for r in runners)
        time.sleep(0.01)
    go.touch()
    assert [r.wait(timeout=120) for r in runners] == [0, 0]
    held = json.loads((tmp_path / "counter").read_text())
    assert {device: now for device, (now, _) in held.items()} == {"0": 0, "1": 0}
    most = {device: most for device, (_, most) in held.items()}
    if blind:
        assert any(most[d] > ROOMS[d] for d in ROOMS), most
    else:
        assert all(most[d] <= ROOMS[d] for d in ROOMS), most


def test_two_runners_fill_the_rooms_together_exactly(tmp_path):
    first, second = shared(tmp_path / "ledger"), shared(tmp_path / "ledger")
    assert [first.place(BUDGET, cell=f"a{i}").device for i in range(3)] == ["1", "1", "0"]  # best fit, as alone
    assert [second.place(BUDGET, cell=f"b{i}").device for i in range(2)] == ["0", "0"]  # what is left: no less
    assert second.place(BUDGET, cell="b2") is None and second.blocked
    assert second.packer.elsewhere == {"0": footprint(BUDGET), "1": 2 * footprint(BUDGET)}


HOLD_ALONE = ("import sys, time\nfrom pathlib import Path\nfrom bench.run.gpu_ledger import Ledger, Shared\n"
              "from bench.run.packing import Packer\n"
              "packing = Shared(Packer({'0': 80 * 2**30}), Ledger({'0': sys.argv[2]}, Path(sys.argv[1])))\n"
              "print(packing.place(None, alone=True, cell='big-cell'), flush=True)\ntime.sleep(600)\n")


def hold_alone(folder: Path, uuid: str = UUIDS["0"]) -> subprocess.Popen:
    """Another runner, in a process of its own, that holds GPU 0 alone (a cell with the whole device)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_ALONE, str(folder), uuid], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "Placement(device='0', budget=None)"
    return holder


def test_a_cell_alone_elsewhere_takes_the_whole_gpu_until_its_runner_is_killed(tmp_path, capsys):
    holder = hold_alone(tmp_path / "ledger")
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    try:
        assert packing.place(1, cell="tiny") is None and packing.blocked  # nothing of its bytes counted: held whole
        assert packing.where(None, alone=True) is None
        assert f"GPU 0: big-cell of pid {holder.pid} (whole)" in capsys.readouterr().err
        holder.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while process_start(holder.pid) is not None:  # a zombie (not waited for by this test, its parent) is gone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        placement = packing.place(BUDGET, cell="mine")  # its flock died with it, its entry with its pid
    finally:
        holder.kill()
        holder.wait()
    assert placement.device == "0" and not packing.blocked
    assert [json.loads(line)["cell"] for line in (tmp_path / "ledger" / f"{UUIDS['0']}.ledger").open()] == ["mine"]


def test_a_killed_process_not_yet_waited_for_is_gone():
    """A runner killed with -9 stays a zombie until its parent waits for it: its pid and start time still read
    from /proc, but it holds nothing (its entries would otherwise block the GPU as long as the parent lives)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert process_start(child.pid) is not None
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process_start(child.pid) is None
    finally:
        child.wait()


def entry(pid: int, started: int | None, cell: str, held: int | None = GIB, **other) -> dict:
    return {"runner": f"r-{cell}", "pid": pid, "started": started, "pidns": os.readlink("/proc/self/ns/pid"),
            "cell": cell, "bytes": held, "beat": time.time(), **other}


def ledger_file(folder: Path, lines: list) -> Path:
    folder.mkdir(mode=0o1777, exist_ok=True)
    path = folder / f"{UUIDS['0']}.ledger"
    path.write_bytes(b"".join(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
                              for line in lines))
    return path


def held_elsewhere(folder: Path) -> int:
    packing = shared(folder, {"0": 80 * GIB})
    packing.where(BUDGET)
    return packing.packer.elsewhere["0"]


def test_only_live_runners_entries_count(tmp_path):
    parent = os.getppid()  # a live process: its entry counts while its start time is the one recorded
    pidns = os.readlink("/proc/self/ns/pid")
    live, reused = entry(parent, process_start(parent), "live"), entry(parent, process_start(parent) + 1, "reused")
    gone = entry(2**22 + 1, 1, "gone")  # above any pid_max: no such process
    foreign = [entry(7, 1, "renewed", 3 * GIB, pidns="pid:[1]"),  # another container: its beat alone says
               entry(7, 1, "stale", 5 * GIB, pidns="pid:[1]", beat=time.time() - LEASE_S - 1)]
    path = ledger_file(tmp_path / "ledger", [live, reused, gone, *foreign])
    assert held_elsewhere(tmp_path / "ledger") == 1 * GIB + 3 * GIB
    assert [json.loads(line)["cell"] for line in path.open()] == ["live", "renewed"]  # the dead dropped
    assert pidns != "pid:[1]"


def test_a_runner_renews_its_entries_for_runners_in_another_pid_namespace(tmp_path):
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    path = tmp_path / "ledger" / f"{UUIDS['0']}.ledger"
    packing.renew()
    assert not path.exists()  # nothing held: nothing to write
    packing.place(BUDGET, cell="long")
    beat = json.loads(path.read_text())["beat"]
    packing.renew()
    assert json.loads(path.read_text())["beat"] == beat  # renewed every HEARTBEAT_S, not on every call
    packing.ledger.written -= HEARTBEAT_S
    packing.renew()
    assert json.loads(path.read_text())["beat"] > beat


def test_garbage_in_the_ledger_counts_for_nothing_and_never_crashes(tmp_path):
    parent, started = os.getppid(), process_start(os.getppid())
    garbage = [b"\x00\xff not json\n", b"[1, 2]\n", b'"text"\n', b"{}\n", b"[" * 100000 + b"\n",
               entry(True, started, "bool-pid"), entry(parent, started, "zero", 0),
               entry(parent, started, "negative", -GIB), entry(parent, started, "float", 1.5e9),
               entry(parent, started, "future", beat=time.time() + 3600), entry(parent, str(started), "text-start"),
               entry(parent, started, "torn")]
    garbage[-1] = json.dumps(garbage[-1]).encode()[20:60] + b"\n"  # the torn tail a write killed midway leaves
    path = ledger_file(tmp_path / "ledger", [*garbage, entry(parent, started, "kept", 2 * GIB)])
    assert held_elsewhere(tmp_path / "ledger") == 2 * GIB
    assert [json.loads(line)["cell"] for line in path.open()] == ["kept"]
    path.write_bytes(json.dumps(entry(parent, started, "huge", 2 * GIB)).encode() + b"\n" + b" " * MAX_BYTES)
    assert held_elsewhere(tmp_path / "ledger") == 0  # not a ledger: nothing read from it is trusted


def refused(folder: Path) -> str:
    with pytest.raises(BadInput) as error:
        shared(folder, {"0": 80 * GIB}).place(BUDGET, cell="mine")
    assert error.value.where == LEDGER_ENV
    return error.value.message


def test_planted_links_and_open_folders_are_refused_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "link").symlink_to(victim)
    assert "link: a symlink, never followed" in refused(tmp_path / "link")
    assert not list(victim.iterdir())  # nothing made where the link points

    folder = tmp_path / "ledger"
    folder.mkdir(mode=0o1777)
    target = victim / "bashrc"
    target.write_text("keep me\n")
    (folder / f"{UUIDS['0']}.ledger").symlink_to(target)
    assert "a symlink, never followed" in refused(folder)
    (folder / f"{UUIDS['0']}.ledger").unlink()
    os.link(target, folder / f"{UUIDS['0']}.ledger")
    assert "not a regular file of one link" in refused(folder)
    assert target.read_text() == "keep me\n"
    (folder / f"{UUIDS['0']}.ledger").unlink()
    os.mkfifo(folder / f"{UUIDS['0']}.ledger")  # opening a pipe could wait forever: it is opened non-blocking
    assert "not a regular file of one link" in refused(folder)
    (folder / f"{UUIDS['0']}.ledger").unlink()
    os.chmod(folder, 0o777)
    assert "writable by others without the sticky bit (mode 777)" in refused(folder)


def test_a_ledger_file_another_runner_makes_at_the_same_moment_is_opened(tmp_path, monkeypatch):
    """Two runners starting together: both find no file, one makes it first; the other opens that one."""
    real_open, made = os.open, []

    def first_to_make(path, flags, mode=0o777, *, dir_fd=None):
        if str(path).endswith(".ledger") and not flags & os.O_CREAT and not made:  # it looks: none yet
            made.append(real_open(path, os.O_CREAT | os.O_WRONLY, 0o666, dir_fd=dir_fd))  # the other makes it
            os.close(made[0])
            raise FileNotFoundError(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", first_to_make)
    assert shared(tmp_path / "ledger", {"0": 80 * GIB}).place(BUDGET, cell="mine").device == "0" and made


def test_a_ledger_locked_too_long_is_refused_never_waited_for_forever(tmp_path, monkeypatch):
    from bench.run import gpu_ledger

    monkeypatch.setattr(gpu_ledger, "LOCK_WAIT_S", 0.2)
    ledger_file(tmp_path / "ledger", [])
    with open(tmp_path / "ledger" / f"{UUIDS['0']}.ledger") as stopped:  # a runner stopped (Ctrl-Z) mid-step
        fcntl.flock(stopped, fcntl.LOCK_EX)
        assert "locked by another process for over 0.2 s" in refused(tmp_path / "ledger")


def test_a_ledger_spoiled_during_a_run_is_warned_of_once_never_a_crash(tmp_path, capsys):
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    first = packing.place(BUDGET, cell="first")
    os.chmod(tmp_path / "ledger", 0o777)
    assert packing.place(BUDGET, cell="second").device == "0" and packing.lost
    packing.release(first, "first")
    assert capsys.readouterr().err.count("cannot be used safely now") == 1


def test_a_write_that_fails_after_the_placement_keeps_it_taken_once(tmp_path, monkeypatch, capsys):
    packing = shared(tmp_path / "ledger", {"0": 80 * GIB})
    packing.place(BUDGET, cell="first")

    def full_disk(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    second = packing.place(BUDGET, cell="second")
    assert second.device == "0" and packing.packer.used["0"] == 2 * footprint(BUDGET)  # not taken twice
    assert packing.lost and "No space left on device" in capsys.readouterr().err


def test_the_folder_and_its_files_are_open_to_every_user_of_the_machine(tmp_path, monkeypatch):
    old = os.umask(0o077)
    try:
        shared(tmp_path / "ledger").where(BUDGET)
    finally:
        os.umask(old)
    assert oct((tmp_path / "ledger").stat().st_mode & 0o7777) == "0o1777"  # sticky: only an owner replaces a file
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "ledger").iterdir()} == {"0o666"}
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path / "mine"))
    assert ledger_folder() == tmp_path / "mine"
    monkeypatch.delenv(LEDGER_ENV)
    assert ledger_folder().name == "peft-bench-gpu-ledger"


def test_gpus_are_known_by_their_uuids_asked_of_nvidia_smi(monkeypatch):
    answers = {"0": UUIDS["0"], "1": UUIDS["1"], "2": UUIDS["0"], "3": "81559, 559"}
    given = "GPU-00000000-0000-4000-8000-000000000002"  # CUDA_VISIBLE_DEVICES may name a GPU by its UUID
    asked = []

    def smi(args, **kwargs):
        asked.append(args[2])
        return subprocess.CompletedProcess(args, 0, answers[args[2]] + "\n", "")

    monkeypatch.setattr(subprocess, "run", smi)
    assert gpu_uuids(["0", "1", given]) == {"0": UUIDS["0"], "1": UUIDS["1"], given: given}
    assert asked == ["0", "1"]  # a UUID given is its own
    assert gpu_uuids(["0", "3"]) is None  # not a UUID: no ledger, rather than a wrong one
    with pytest.raises(BadInput, match=f"--gpus names one GPU twice: 0 and 2 are all {UUIDS['0']}"):
        gpu_uuids(["0", "2"])


def test_a_packing_runner_gets_the_ledger_of_its_gpus_when_nvidia_smi_gives_their_uuids(monkeypatch, capsys):
    from bench.run.executors import local

    uuids = {"90": UUIDS["0"], "91": UUIDS["1"]}

    def smi(args, **kwargs):
        answer = uuids[args[2]] if "--query-gpu=uuid" in args else "81559, 559"
        return subprocess.CompletedProcess(args, 0, answer + "\n", "")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "90,91")
    monkeypatch.setattr(subprocess, "run", smi)
    memory = lambda cell: None  # noqa: E731 (the prediction is not asked for while building)
    assert local._build(quiet=True, jobs=1, gpus="all", pack=None, predicted_memory=memory).ledger.uuids == uuids
    assert local._build(quiet=True, jobs=1, gpus="all", pack="off", predicted_memory=memory).ledger is None
    uuids["91"] = "No devices were found"
    assert local._build(quiet=True, jobs=1, gpus="all", pack=None, predicted_memory=memory).ledger is None
    assert "nvidia-smi did not give every GPU's UUID, so this runner cannot see" in capsys.readouterr().err


def test_two_runners_sharing_a_suite_on_one_gpu_never_run_more_cells_than_it_has_room_for(tmp_path, monkeypatch):
    """The command line as users run it: two runners of one suite (sharing its cells through cell locks) on one GPU
    with room for one cell (a fake nvidia-smi on PATH; the cells run on the CPU). Which cells run at once is read
    from the processes themselves: each cell writes its pid as it starts training, and lives until it ends."""
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.run.packing import cell_budget
    from bench.tools.plan_cost import predicted_memory
    from tests.test_faults import cli, suite_text
    from tests.test_gpu_ledger_runs import one_fake_gpu

    log = tmp_path / "trainings.log"
    suite = tmp_path / "ledger.yaml"
    suite.write_text(suite_text(f"[{{name: logged-full, overrides: {{log: '{log}', sleep_s: 2}}}}]", name="ledger",
                                seeds="[1, 2, 3, 4]", timeout=300))
    cells = grid.expand(load_suite(str(suite)), threads=1)
    room_mib = footprint(cell_budget(predicted_memory(cells[0]))) // 2**20 + 1  # one cell's footprint, not two
    log.unlink(missing_ok=True)  # the prediction built the method (on no device) in this process
    one_fake_gpu(tmp_path, monkeypatch, UUIDS["0"], room_mib)
    runners = [cli("run", "--suite", str(suite), "--results", str(tmp_path / "results"), "--gpus", "all")
               for _ in range(2)]
    predicting = {r.pid for r in runners}  # a runner whose prediction is not cached builds the method too

    def trainings() -> set[int]:
        return {int(pid) for pid in log.read_text().split()} - predicting if log.exists() else set()

    most, deadline = 0, time.monotonic() + 600
    while any(r.poll() is None for r in runners):
        assert time.monotonic() < deadline
        most = max(most, sum(process_start(pid) is not None for pid in trainings()))
        time.sleep(0.05)
    said = [r.communicate()[1] for r in runners]
    assert [r.returncode for r in runners] == [0, 0], said
    assert len(trainings()) == 4 and most == 1
    assert any("waiting for GPU room other runners on this machine hold: GPU 90" in s for s in said)
