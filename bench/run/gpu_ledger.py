"""The machine's GPU ledger: what every packing runner on this machine (`run --gpus --pack memory`) holds of each GPU,
and what each waits for.

Each runner reads a GPU's room from nvidia-smi once, as it starts, and nvidia-smi cannot see another runner's
reservations (a cell that just started has allocated little of its budget yet), so two runners on the same GPUs
(two users, two suites in two shells, or two runners sharing one suite through cell locks) would each place a whole
room's worth of cells. So every placement is made and written here in one locked step, counting what the other
live runners hold (`Shared`, around the pure Packer: bench/run/packing.py). The files, their folder, their locks
and what is refused of them: bench/run/ledger_files.py.

- **Entries**: one JSON line per (runner, cell, GPU): the runner's pid, its process's start time and pid namespace,
  a nonce of the runner, the cell, and its footprint in bytes (null: the cell holds the GPU alone, so others count
  it as full). A placement locks every GPU's file of the runner, reads the others' live lines, decides, writes them
  back with its own, then unlocks.
- **Waiting claims (the queue)**: a runner whose cell only the other runners keep out (its own Packer would place it
  were their cells gone), as it asks to place it or, while cells of its own run, asks `where` its next one would go
  (the local executor takes a cell only once it can start), writes a claim line with its entries' fields, the cell,
  its footprint (null: whole) and `waits`, when the others first kept it out (kept until it places a cell), on each
  GPU that placement names: the GPUs it waits for, none other. A request of another runner made later than that (its
  runner's first such wait, else now; ties by nonce) counts each such GPU as held whole: it places nothing new
  there, so the cells there drain and the waiter is placed, whatever each runner read as its room. A request never
  counts claims newer than its own, so the oldest waiter is held back by cells alone, which end: waiters are placed
  in the order they came, and none waits for ever (no cycle: the order is total). A claim is decided again at each
  of its runner's requests that finds no room (an older claim counts whole there too, so it waits for other GPUs, or
  for none until that one is placed; the steps between write it unchanged), is removed in the step that places a
  cell of its runner, and leaves the ledger as its runner has no cell left to take or stops asking (`withdraw`). Its
  GPUs are always ones its runner's Packer places the cell on once the other runners' cells are gone: a cell that
  could never fit (Packer.demand refuses it before any cell starts) never claims anything. The price of the order: a
  newer request waits behind an older one even where the room beside the draining cells would fit it.
- **Live**: in this pid namespace, a line counts while its pid runs with the same start time (a reused pid does
  not, nor a killed runner's zombie: bench.run.locks.process_start); from another namespace (another container
  sharing the folder), its pids mean nothing here, and /proc mounted hidepid hides another user's process that
  kill(pid, 0) says exists: those while their owner renewed them within LEASE_S (a thread renews them, claims
  too). Dead lines are dropped at the next write: a dead waiter's claim counts for nothing.
- **Never trusted**: a line that is not a whole, well-typed entry or claim (`_valid`), a beat or a claim's `waits`
  in the future, a file over MAX_BYTES counts for nothing (and is dropped); each runner writes its own lines back on
  every write, so a torn file heals at the live runners' next steps. A ledger refused as it starts is BadInput,
  before any cell starts; later in a run, the runner says so, decides that step blind rather than kill its cells,
  and tries the ledger again at the next: its lines never outlive its cells.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import threading
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from bench.errors import BadInput
from bench.fmt import size
from bench.run.ledger_files import LEDGER_ENV, LedgerError, LedgerFiles
from bench.run.locks import HEARTBEAT_S, LEASE_S, process_start
from bench.run.nvidia_smi import query_gpus
from bench.run.packing import Packer, Placement, footprint

MAX_BYTES = 1024**2  # far above any real ledger (a line is ~200 B): a larger file is not one
LOCK_WAIT_S = 30.0
LOST_LOCK_WAIT_S = 0.1  # while the ledger is lost: each step tries it briefly, so a stalled lock slows nothing
RENEW_CHECK_S = 1.0  # how often the renewing thread looks: a lost ledger is tried again within it
MAX_HELD = 2**50  # bytes of one entry: far above any GPU (1 PiB); a larger number is not a footprint
MAX_PID = 2**31 - 1  # pid_t: a larger pid (or 0, -1: a process group, every process) is not one process
UUID = re.compile(r"(GPU|MIG)-[0-9a-fA-F-]{8,64}")
_FIELDS = {"runner": str, "pid": int, "started": int, "pidns": str, "cell": str, "beat": float}


def _pid_namespace() -> str:
    """This process's pid namespace ("pid:[4026531836]"), "" where /proc cannot say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def gpu_uuids(devices: list[str]) -> dict[str, str] | None:
    """Each device's UUID (a UUID given as the device is its own), asked of nvidia-smi, never of CUDA; None when
    nvidia-smi cannot say for every one. BadInput when two devices are one GPU (aliased by CUDA_VISIBLE_DEVICES)."""
    asked = query_gpus([device for device in devices if not UUID.fullmatch(device)], ["uuid"])
    if asked is None or not all(UUID.fullmatch(uuid) for uuid, in asked.values()):
        return None
    uuids = {device: asked[device][0] if device in asked else device for device in devices}
    twice = {u for u, n in Counter(uuids.values()).items() if n > 1}
    if twice:
        raise BadInput("--gpus names one GPU twice: " + "; ".join(
            f"{' and '.join(d for d in uuids if uuids[d] == u)} are all {u}" for u in sorted(twice)), "--gpus")
    return uuids


def machine_ledger(devices: list[str]) -> Ledger | None:
    """The ledger of these GPUs, None (said on stderr) when nvidia-smi gives not every one's UUID."""
    uuids = gpu_uuids(devices)
    if uuids is None:
        print("--pack memory: nvidia-smi did not give every GPU's UUID, so this runner cannot see what other runners "
              "on this machine hold of them (docs/scale.md)", file=sys.stderr)
    return None if uuids is None else Ledger(uuids)


def _time(value) -> float | None:
    """A time read from a line: a finite number (an integer of 400 digits is JSON too: float() refuses it)."""
    if type(value) not in (int, float):
        return None
    try:
        moment = float(value)
    except OverflowError:
        return None
    return moment if math.isfinite(moment) else None


def _valid(line) -> dict | None:
    """The entry or claim, if the line is one: every field of its type, a pid of one process, bytes a positive int
    up to MAX_HELD or null, a finite beat not in the future, and a claim's `waits` a finite time after 0, not in the
    future either."""
    if not isinstance(line, dict) or not all(type(line.get(k)) is t or t is float and type(line.get(k)) is int
                                             for k, t in _FIELDS.items()):
        return None
    held, beat = line.get("bytes", 0), _time(line["beat"])
    if held is not None and (type(held) is not int or not 0 < held <= MAX_HELD) or not 0 < line["pid"] <= MAX_PID \
            or beat is None or beat > time.time() + HEARTBEAT_S:
        return None
    if "waits" in line:
        waits = _time(line["waits"])
        if waits is None or not 0 < waits <= time.time() + HEARTBEAT_S:
            return None
        return {**line, "beat": beat, "waits": waits}
    return {**line, "beat": beat}


class Ledger(LedgerFiles):
    """This runner's side of the ledger of `uuids` (device -> GPU UUID): its own entries and waiting claim, and the
    locked step."""

    def __init__(self, uuids: dict[str, str], folder: Path | None = None):
        super().__init__(uuids, folder)
        pid = os.getpid()
        self.me = {"runner": os.urandom(8).hex(), "pid": pid, "started": process_start(pid) or 0,
                   "pidns": _pid_namespace()}
        self.mine: dict[str, dict[str, int | None]] = {d: {} for d in uuids}  # device -> cell -> bytes (None: whole)
        # what this runner waits for ({"cell", "bytes", "waits", "devices"}: Shared decides it), None: nothing
        self.claim: dict | None = None
        self.written = 0.0  # when this runner last wrote its lines (their beat)

    def _live(self, line: dict, now: float) -> bool:
        if line["pidns"] == self.me["pidns"]:
            started = process_start(line["pid"])
            if started is not None or not _hidden(line["pid"]):
                return started == line["started"]
        # from another pid namespace its pids mean nothing here, and a process /proc hides (mounted hidepid: another
        # user's) cannot be told from a reused pid: only its renewals can say
        return now - line["beat"] <= LEASE_S

    def _others(self, fd: int, now: float) -> list[dict]:
        """The live entries and claims of other runners in the open file: each line checked, garbage dropped."""
        text = os.pread(fd, MAX_BYTES + 1, 0)
        if len(text) > MAX_BYTES:
            return []
        others = {}
        for text_line in text.decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError, RecursionError):
                line = _valid(json.loads(text_line))
                if line and line["runner"] != self.me["runner"] and self._live(line, now):
                    # a torn rewrite may repeat a line
                    others[line["runner"], line["cell"], "waits" in line] = line
        return list(others.values())

    def _own(self, device: str, now: float) -> list[dict]:
        """This runner's lines for the device's file: an entry per cell it holds there, and its claim if it waits for
        the device."""
        own = [{**self.me, "cell": cell, "bytes": held, "beat": now} for cell, held in self.mine[device].items()]
        if self.claim is not None and device in self.claim["devices"]:
            own.append({**self.me, "cell": self.claim["cell"], "bytes": self.claim["bytes"], "beat": now,
                        "waits": self.claim["waits"]})
        return own

    @contextlib.contextmanager
    def step(self, wait: float) -> Iterator[dict[str, list[dict]]]:
        """Every device's file locked (each lock waited for at most `wait` s): yields the other live runners' entries
        and claims by device; what `mine` and `claim` hold when the block ends is written back with them (the block
        raising writes nothing)."""
        with self.locked(wait) as (folder, files):
            now = time.time()
            others = {device: self._others(fd, now) for device, fd in files.items()}
            yield others
            lost = []  # files unlinked mid-step: what others read now lacks these lines
            for device, fd in files.items():  # every file written, whichever of them was replaced
                text = "".join(json.dumps(e) + "\n" for e in others[device] + self._own(device, now)).encode()
                os.pwrite(fd, text, 0)
                os.ftruncate(fd, len(text))  # killed before this: the old tail's lines are repeats or dead
                if not self.named(fd, folder, device):
                    lost.append(str(self.path(device)))
            if lost:
                raise LedgerError(f"{', '.join(lost)}: removed or replaced during this runner's step (its entries "
                                  "are written to the new file at the next)")
            self.written = now


def _hidden(pid: int) -> bool:
    """Whether process `pid` exists though /proc shows nothing of it: another user's, /proc mounted hidepid. Only
    "no such process" (ESRCH) says it is gone; a process of this user /proc says nothing of is a zombie."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        pass
    return False


class Shared:
    """A Packer whose devices other runners on this machine pack too: each answer counts what the ledger says they
    hold and the GPUs their older waiting claims wait for, and each placement, or claim, enters the ledger in the
    same locked step. Without a ledger, the Packer alone."""

    def __init__(self, packer: Packer, ledger: Ledger | None):
        self.packer, self.ledger = packer, ledger
        self.blocked = False  # the last answer was None for the room other runners hold: wait, never fail
        self.others: dict[str, list[dict]] = {}  # their entries and claims by device, as last read
        self.holding: dict[str, list[dict]] = {}  # of those, what the last answer counted: entries, older claims
        self.since: float | None = None  # when the others first kept this runner's cell out (its place in the queue)
        self.lost = False  # the last step could not use the ledger: said once, and the next step tries it again
        self.guard = threading.RLock()  # one step at a time: the scheduling loop's or the renewing thread's

    def _step(self, decide: Callable[[], Placement | None]) -> Placement | None:
        """`decide()` inside the ledger's locked step, the Packer told what the others hold."""
        if self.ledger is None:
            return decide()
        first, decided = not self.ledger.written, []
        try:
            with self.ledger.step(LOST_LOCK_WAIT_S if self.lost else LOCK_WAIT_S) as self.others:
                self._count()
                decided.append(decide())
        except (LedgerError, OSError) as e:  # OSError: the file could not be read or written (a full disk)
            if first:
                raise BadInput(f"the GPU ledger cannot be used safely: {e}. Remove it, or set {LEDGER_ENV} to a "
                               "folder of your own that the runners on these GPUs share", LEDGER_ENV) from e
            if not self.lost:  # never for good: its entries would outlive its cells, blocking the other runners
                print(f"the GPU ledger cannot be used safely now ({e}): packing blind to other runners on these GPUs "
                      "until it can be again (tried at each step)", file=sys.stderr, flush=True)
            self.lost = True
            if decided:  # the write after it failed: the decision stands (taken once), made with what others held
                return decided[0]
            self.others = {}
            self._count()
            return decide()
        if self.lost:
            print("the GPU ledger is in use again", file=sys.stderr, flush=True)
            self.lost = False
        return decided[0]

    def _count(self) -> None:
        """The Packer told what the others hold for this runner's request (`holding`, `Packer.elsewhere`): on each
        device, their cells' footprints, or its whole room where a cell of theirs runs alone or where a claim older
        than this request waits for it. The request is as old as `since` (else now); equal times go by nonce."""
        request = (self.since or time.time(), self.ledger.me["runner"])
        self.holding = {d: [e for e in lines if "waits" not in e or (e["waits"], e["runner"]) < request]
                        for d, lines in self.others.items()}
        self.packer.elsewhere = {d: self.packer.rooms[d] if any(e["bytes"] is None or "waits" in e for e in held)
                                 else sum(e["bytes"] for e in held) for d, held in self.holding.items()}

    def _where_if(self, elsewhere: dict[str, int], budget: int | None, alone: bool,
                  devices: int) -> Placement | None:
        """Where the Packer would place the cell were the others to hold `elsewhere` instead; nothing is taken."""
        counted, self.packer.elsewhere = self.packer.elsewhere, elsewhere
        try:
            return self.packer.where(budget, alone, devices)
        finally:
            self.packer.elsewhere = counted

    def _queue(self, budget: int | None, alone: bool, devices: int, cell: str) -> None:
        """This runner's `cell` found no room. Kept out by the others (its Packer alone would place it; its own cells
        end without them, so waiting for those earns no place), it is in their queue from now on (or since it first
        was), and claims the devices its Packer places the cell on were the others' cells gone (older claims' devices
        still held whole); none where there are none (its own cells, or an older waiter, keep it out)."""
        if self.since is None and self._where_if({}, budget, alone, devices) is None:
            return
        self.since = self.since or time.time()
        older = {d: self.packer.rooms[d] for d, held in self.holding.items() if any("waits" in e for e in held)}
        target = self._where_if(older, budget, alone, devices)
        self.ledger.claim = None if target is None else {
            "cell": cell, "bytes": None if target.alone else footprint(budget), "waits": self.since,
            "devices": target.device.split(",")}

    def _answer(self, decide: Callable[[], Placement | None], budget: int | None, alone: bool,
                devices: int) -> Placement | None:
        with self.guard:
            placement = self._step(decide)
            # blocked: only what the others hold stops it (its own cells would not): say so once, and wait for them
            blocked = placement is None and any(self.packer.elsewhere.values()) and \
                self._where_if({}, budget, alone, devices)
            if blocked and not self.blocked:
                print(f"waiting for GPU room other runners on this machine hold: {_holders(self.holding)}",
                      file=sys.stderr, flush=True)
            self.blocked = bool(blocked)
            return placement

    def where(self, budget: int | None, alone: bool = False, devices: int = 1, cell: str = "") -> Placement | None:
        """Where a cell would start now, nothing taken. With `cell`, the runner's next cell (the local executor asks
        before it takes one, while cells of its own run), a None answer queues it as `place`'s does: its claim stays
        until a placement of this runner, or `withdraw`."""
        def ask() -> Placement | None:
            placement = self.packer.where(budget, alone, devices)
            if placement is None and cell and self.ledger is not None:
                self._queue(budget, alone, devices, cell)
            return placement
        return self._answer(ask, budget, alone, devices)

    def place(self, budget: int | None, alone: bool = False, devices: int = 1, cell: str = "") -> Placement | None:
        def take() -> Placement | None:
            placement = self.packer.place(budget, alone, devices)
            if self.ledger is None:
                return placement
            if placement is None:
                self._queue(budget, alone, devices, cell)
                return None
            for device in placement.device.split(","):  # a cell alone holds its devices whole (None)
                self.ledger.mine[device][cell] = None if placement.alone else footprint(placement.budget)
            self.since = self.ledger.claim = None  # placed: its claim leaves the ledger in this step
            return placement
        return self._answer(take, budget, alone, devices)

    def release(self, placement: Placement, cell: str = "") -> None:
        with self.guard:
            self.packer.release(placement)
            if self.ledger is not None:
                for device in placement.device.split(","):
                    self.ledger.mine[device].pop(cell, None)
                self._step(lambda: None)

    def renew(self) -> None:
        """Write this runner's entries and claim again once their beat is HEARTBEAT_S old (runners in another pid
        namespace, or whose /proc hides this process, judge them by it), and at once after a step that could not
        write them."""
        with self.guard:
            if self.ledger is not None and (self.lost or (any(self.ledger.mine.values()) or self.ledger.claim) and
                                            time.time() - self.ledger.written >= HEARTBEAT_S):
                self._step(lambda: None)

    def withdraw(self) -> None:
        """This runner asks for no more room (it stops): its claim leaves the ledger now, not as its process ends."""
        with self.guard:
            self.since = None
            if self.ledger is not None and self.ledger.claim is not None:
                self.ledger.claim = None
                self._step(lambda: None)

    @contextlib.contextmanager
    def renewing(self) -> Iterator[None]:
        """`renew` every RENEW_CHECK_S from a thread of its own (no CUDA, no fork) while the block runs: the runner's
        loop stands still at each record it hands over (stored, sent to trackers) for as long as that takes. As the
        block ends, the runner stops asking: `withdraw`."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(RENEW_CHECK_S):
                try:
                    self.renew()
                except Exception as e:  # noqa: BLE001 - the thread must outlive what a shared file can do to a step
                    if not self.lost:
                        print(f"the GPU ledger could not be renewed ({type(e).__name__}: {e}): tried again in "
                              f"{RENEW_CHECK_S:g} s", file=sys.stderr, flush=True)
                    self.lost = True

        thread = threading.Thread(target=beat, name="gpu-ledger-renewal", daemon=True)
        if self.ledger is not None:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
            self.withdraw()


def _holders(others: dict[str, list[dict]]) -> str:
    """Who holds what of each device: "GPU 0: <cell> of pid 123 (2.1 GB), <cell> of pid 456 (whole), <cell> of pid
    789 (waits for 3.1 GB)"."""
    def entry(e: dict) -> str:
        held = size(e["bytes"]) if e["bytes"] else "whole"
        return f"{_printable(e['cell'])} of pid {e['pid']} ({'waits for ' + held if 'waits' in e else held})"

    return "; ".join(f"GPU {device}: " + ", ".join(map(entry, held)) for device, held in others.items() if held)


def _printable(name: str) -> str:
    """A name read from a file any local user may write, as it may be printed: each character of Unicode's "other"
    categories (C: controls, and format characters such as the bidi overrides and isolates, which reorder what
    follows them so a name could print as another; surrogates, private-use and unassigned ones) or a line or
    paragraph separator replaced by '?'."""
    return "".join("?" if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") else c
                   for c in name)
