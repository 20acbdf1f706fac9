"""The queue between packing runners in the machine's GPU ledger (bench/run/gpu_ledger.py): a runner waiting for a
whole GPU beside another that keeps placing small cells there is placed once that GPU drains, two waiters are
placed oldest first, a dead waiter's claim counts for nothing, and a claim holds back only the GPUs it waits for.
The other runners are processes of their own (their lines count while their pids live), told what to place on their
stdin; fake GPUs and the ledger's folder as in tests/test_gpu_ledger.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run.locks import HEARTBEAT_S, LEASE_S, process_start
from tests.test_faults import ROOT
from tests.test_gpu_ledger import BUDGET, GIB, UUIDS, entry, ledger_file, shared

ROOM = 80 * GIB
RUNNER = ("import json, sys\nfrom pathlib import Path\nfrom bench.run.gpu_ledger import Ledger, Shared\n"
          "from bench.run.packing import Packer\n"
          "rooms, uuids = json.loads(sys.argv[2]), json.loads(sys.argv[3])\n"
          "packing, held = Shared(Packer(rooms), Ledger(uuids, Path(sys.argv[1]))), {}\n"
          "for line in sys.stdin:\n"
          "    verb, cell, size = line.split()\n"
          "    if verb == 'place':\n"
          "        placement = packing.place(None if size == 'alone' else int(size), size == 'alone', cell=cell)\n"
          "        held.update({cell: placement} if placement else {})\n"
          "        print(placement and placement.device, flush=True)\n"
          "    else:\n"
          "        packing.release(held.pop(cell), cell)\n"
          "        print('released', flush=True)\n")


class Runner:
    """Another packing runner on the same GPUs, in a process of its own: it places and releases what it is told."""

    def __init__(self, folder: Path, devices: tuple[str, ...] = ("0",)):
        rooms, uuids = {d: ROOM for d in devices}, {d: UUIDS[d] for d in devices}
        self.process = subprocess.Popen([sys.executable, "-c", RUNNER, str(folder), json.dumps(rooms),
                                         json.dumps(uuids)], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def place(self, cell: str, size: int | str = BUDGET) -> str:
        """The device it placed the cell on, "None" when it waits."""
        return self._ask(f"place {cell} {size}")

    def release(self, cell: str) -> None:
        assert self._ask(f"release {cell} -") == "released"

    def _ask(self, line: str) -> str:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def lines(folder: Path, device: str = "0") -> list[tuple[str, bool]]:
    """(cell, a waiting claim) of each line in the device's ledger file."""
    path = folder / f"{UUIDS[device]}.ledger"
    return [(line["cell"], "waits" in line) for line in map(json.loads, path.read_text().splitlines())]


def test_a_runner_waiting_for_a_whole_gpu_is_placed_once_the_other_runners_small_cells_drain(tmp_path):
    """Before the queue, the other runner took the room each of its cells freed for its next one, so the GPU never
    emptied: the runner waiting for it whole waited for as long as the other had cells."""
    folder = tmp_path / "ledger"
    small = Runner(folder)
    try:
        assert [small.place("s0"), small.place("s1")] == ["0", "0"]
        waiting = shared(folder, {"0": ROOM})
        assert waiting.place(None, alone=True, cell="big") is None and waiting.blocked
        small.release("s0")
        assert small.place("s2") == "None"  # the room s0 freed is no longer taken again
        assert ("big", True) in lines(folder)  # it waits for GPU 0, in the ledger for the others to see
        small.release("s1")
        placement = waiting.place(None, alone=True, cell="big")
        assert placement is not None and placement.device == "0" and not waiting.blocked
        assert lines(folder) == [("big", False)]  # placed: its claim removed in that same step
        assert small.place("s2") == "None"  # held whole by the cell alone now
        waiting.release(placement, "big")
        assert small.place("s2") == "0"
    finally:
        small.close()


def test_two_waiters_are_placed_oldest_first_whichever_asks_first(tmp_path):
    """No deadlock: the older waiter counts no claim of the newer one, so only cells (which end) hold it back."""
    folder = tmp_path / "ledger"
    holder = Runner(folder)
    try:
        assert holder.place("theirs") == "0"
        older, newer = shared(folder, {"0": ROOM}), shared(folder, {"0": ROOM})
        assert older.place(None, alone=True, cell="older") is None
        assert newer.place(None, alone=True, cell="newer") is None
        assert ("older", True) in lines(folder) and ("newer", True) not in lines(folder)  # it waits behind it
        holder.release("theirs")
        assert newer.place(None, alone=True, cell="newer") is None and newer.blocked  # GPU 0 is empty, yet older's
        placed = older.place(None, alone=True, cell="older")
        assert placed.device == "0"
        assert newer.place(None, alone=True, cell="newer") is None
        assert ("newer", True) in lines(folder)  # the oldest waiter now: it claims GPU 0 in its turn
        assert holder.place("theirs-2") == "None"  # so cells that came after it wait behind it
        older.release(placed, "older")
        assert newer.place(None, alone=True, cell="newer").device == "0"
        assert lines(folder) == [("newer", False)]
    finally:
        holder.close()


def test_waiters_of_the_same_moment_go_by_nonce(tmp_path):
    parent = os.getppid()  # a live process
    mine = shared(tmp_path / "ledger", {"0": ROOM})
    mine.since = time.time() - 10
    for runner, counted in (("0" * 16, True), ("f" * 16, False)):  # before and after this runner's own nonce
        claim = entry(parent, process_start(parent), "theirs", None, runner=runner, waits=mine.since)
        ledger_file(tmp_path / "ledger", [claim])
        assert (mine.where(BUDGET) is None) == counted


def test_a_dead_waiters_claim_counts_for_nothing(tmp_path):
    folder = tmp_path / "ledger"
    mine = shared(folder, {"0": ROOM})
    first = mine.place(BUDGET, cell="first")
    waiter = Runner(folder)
    try:
        assert waiter.place("big", "alone") == "None"
        assert mine.place(BUDGET, cell="second") is None and mine.blocked  # its claim holds GPU 0 while it lives
        waiter.process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while process_start(waiter.process.pid) is not None:  # its zombie is gone too
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert mine.place(BUDGET, cell="second").device == "0"
    finally:
        waiter.close()
    assert lines(folder) == [("first", False), ("second", False)]  # the dead claim dropped
    mine.release(first, "first")


def test_a_claim_holds_back_only_the_gpu_it_waits_for(tmp_path):
    """A runner of GPUs 0 and 1 waiting for a whole GPU claims the one its Packer would take (the first of equal
    rooms); the other runner still places beside its cells on the other GPU."""
    folder = tmp_path / "ledger"
    small = Runner(folder, ("0", "1"))
    try:
        assert [small.place("s0", 60 * GIB), small.place("s1", 60 * GIB)] == ["0", "1"]  # one fits each GPU
        waiting = shared(folder, {"0": ROOM, "1": ROOM})
        assert waiting.place(None, alone=True, cell="big") is None
        assert ("big", True) in lines(folder, "0") and ("big", True) not in lines(folder, "1")
        assert [small.place("s2"), small.place("s3")] == ["1", "1"]  # best fit would be GPU 0 (s0 there): held
        unrelated = Runner(folder, ("1",))  # a runner of GPU 1 alone never reads GPU 0's file
        try:
            assert unrelated.place("u0") == "1"
        finally:
            unrelated.close()
        small.release("s0")
        assert waiting.place(None, alone=True, cell="big").device == "0"
    finally:
        small.close()


def test_a_runner_kept_out_by_its_own_cells_or_a_request_no_drain_meets_claims_nothing(tmp_path):
    """Only a placement the other runners' cells alone keep out is claimed: its own cells end without their help,
    and a request its Packer can never place (two whole GPUs of one) would hold the GPU for ever."""
    folder = tmp_path / "ledger"
    mine = shared(folder, {"0": ROOM})
    own = mine.place(BUDGET, cell="own")
    assert mine.place(None, alone=True, cell="big") is None and not mine.blocked
    assert mine.place(BUDGET, devices=2, cell="two") is None
    assert lines(folder) == [("own", False)] and mine.ledger.claim is None
    other = Runner(folder)
    try:
        assert other.place("theirs") == "0"  # nothing holds it back
    finally:
        other.close()
    mine.release(own, "own")


def test_a_claim_is_renewed_and_withdrawn_when_its_runner_stops_asking(tmp_path):
    folder = tmp_path / "ledger"
    holder = Runner(folder)
    try:
        assert holder.place("theirs") == "0"
        waiting = shared(folder, {"0": ROOM})
        with waiting.renewing():
            assert waiting.place(None, alone=True, cell="big") is None
            path = folder / f"{UUIDS['0']}.ledger"
            claim = json.loads(path.read_text().splitlines()[-1])
            waiting.ledger.written -= HEARTBEAT_S  # no cell of its own: the claim alone is renewed
            waiting.renew()
            renewed = json.loads(path.read_text().splitlines()[-1])
            assert renewed["beat"] > claim["beat"] and renewed["waits"] == claim["waits"]  # its place kept
        assert lines(folder) == [("theirs", False)] and waiting.since is None
    finally:
        holder.close()


def test_claims_any_user_may_write_are_checked_like_entries(tmp_path):
    parent, started = os.getppid(), process_start(os.getppid())
    spoiled = [entry(parent, started, f"bad-{i}", None, waits=waits)
               for i, waits in enumerate(["1", None, 0, -1.0, 10**400, time.time() + 3600, True])]
    spoiled += [json.dumps(entry(parent, started, name, None)).encode()[:-1] + b', "waits": ' + name.encode() + b'}\n'
                for name in ("NaN", "Infinity", "-Infinity")]  # Python's json reads all three as floats
    kept = entry(parent, started, "kept", None, waits=time.time() - 1)
    stale = entry(7, 1, "stale", None, pidns="pid:[1]", waits=time.time() - LEASE_S - 9, beat=time.time() - LEASE_S - 1)
    renewed = entry(7, 1, "renewed", None, pidns="pid:[1]", waits=time.time() - LEASE_S - 9)
    path = ledger_file(tmp_path / "ledger", [*spoiled, stale, renewed, kept])  # another container's: by its beat
    packing = shared(tmp_path / "ledger", {"0": ROOM})
    assert packing.where(BUDGET) is None and packing.packer.elsewhere == {"0": ROOM}  # the claims: held whole
    assert [json.loads(line)["cell"] for line in path.open()] == ["renewed", "kept"]


def test_a_cell_sharded_over_two_gpus_claims_both_and_is_placed_once_both_drain(tmp_path):
    folder = tmp_path / "ledger"
    small = Runner(folder, ("0", "1"))
    try:
        assert [small.place("s0", 60 * GIB), small.place("s1", 60 * GIB)] == ["0", "1"]
        waiting = shared(folder, {"0": ROOM, "1": ROOM})
        assert waiting.place(BUDGET, devices=2, cell="sharded") is None and waiting.blocked
        assert all(("sharded", True) in lines(folder, d) for d in ("0", "1"))
        assert small.place("s2") == "None"  # room on both, each held for it
        small.release("s0")
        assert waiting.place(BUDGET, devices=2, cell="sharded") is None  # GPU 1 still has s1
        small.release("s1")
        placement = waiting.place(BUDGET, devices=2, cell="sharded")
        assert placement.device == "0,1" and lines(folder, "0") == lines(folder, "1") == [("sharded", False)]
    finally:
        small.close()


@pytest.mark.parametrize("ask", ["where", "place"])
def test_a_runner_kept_out_by_its_own_cell_takes_no_place_in_the_queue_before_a_waiter_the_others_keep_out(tmp_path,
                                                                                                          ask):
    """Waiting for its own cell is no waiting for the others: before, its request dated from then, so once its cell
    ended it went ahead of a runner that had claimed the GPU meanwhile (which had waited for that very cell)."""
    folder = tmp_path / "ledger"
    mine = shared(folder, {"0": ROOM})
    own = mine.place(60 * GIB, cell="own")
    assert getattr(mine, ask)(30 * GIB, cell="next") is None and not mine.blocked
    waiter = Runner(folder)
    try:
        assert waiter.place("big", "alone") == "None" and ("big", True) in lines(folder)
        mine.release(own, "own")
        assert getattr(mine, ask)(30 * GIB, cell="next") is None and mine.blocked  # the waiter goes first
        assert mine.since is not None and mine.ledger.claim is None  # in the queue now, behind it
    finally:
        waiter.close()
