"""Packing cells onto GPUs by their predicted memory (`run --gpus`): as many cells on a device as their budgets fit.

A cell's budget is its predicted peak (`memory.predicted_peak_bytes`, what `peft-bench estimate` computes: the
larger of its training step's and its evaluation batch's, the evaluation's alone for a cell that trains nothing)
with MEMORY_MARGIN and OTHER_BYTES on top; the cell process holds its CUDA caching allocator to that budget
(`torch.cuda.set_per_process_memory_fraction`, bench/cell/device_budget.py), so a cell that outgrows its
prediction fails alone instead of starving the cells beside it. Each process also holds CONTEXT_BYTES outside the
allocator (its CUDA context and loaded kernels), which no fraction limits: the device's room counts it per cell.

Why these numbers (docs/measurements/gpu-2026-11-30.md, 15 cells on an H200, and the two 1.1B cells of
gpu-perf-2026-11-30.md): the measured allocator peak was at most 1/0.91 = 1.10 × the prediction (head-only, whose
gap is the 66 MiB of cuBLAS workspaces the prediction leaves out), and at most 1.036 × the prediction plus that
"other" memory (IA³: one 132 MiB kernel buffer no probe sees). The measured "other" was 64-82 MiB. So a budget of
1.10 × (predicted + 128 MiB) covers the worst allocated peak seen with 6 % to spare for what the fraction really
limits, the allocator's reserved bytes (cached, partly used blocks), which those runs did not tabulate:
benchmarks/gpu_packing.py measures reserved peak / budget on the GPU, to confirm or move the margin. A cell that
still runs out is retried alone with the whole device (bench/run/executors/local.py), never lost.

Cells that cannot share: a cell with no prediction (a model only on the hub while offline, a method that cannot be
built on the meta device, a multi-task cell, whose members' evaluations are not modelled) runs alone on an empty
device, with no limit but the device's own, as every cell ran before packing. A generation task's cell shares: its
evaluation's prediction bounds generate's peak from above (`memory.upper_bound`, bench/cell/eval_probe.py).
A cell whose budget exceeds every device's room runs sharded over `gpus_per_cell` > 1 empty devices
(bench/cell/sharded.py; its placement names them all, "0,1") when its per-device prediction sharded over that many
(bench/tools/sharding.py) gives a budget their rooms fit; otherwise it runs alone on the largest empty device, whole.
A cell whose prediction itself (no margin) with its CUDA context fits no device, and whose sharded budget does not
fit either, is refused before any cell starts (Packer.demand): it could only run out of memory. Only where the
prediction bounds the peak from below (every measured peak above was at least its prediction, and the estimate
models the GPU's step, autocast included, to the MiB of those runs' own probes: bench/tools/cuda_step.py): a cell
whose estimate says where its step departs from a GPU's (`memory.not_modelled`: Liger's fused loss over fp32 or fp16
weights under autocast), or says that its prediction bounds the peak from above (`memory.upper_bound`: fishmask and
child-tuning, whose trained tensors the data choose; a generation task's evaluation; a safe budget to share a device
with), is never refused: it runs alone on the largest device instead when it fits no device; a cell whose method FSDP2
cannot run (Method.unshardable: QLoRA's 4-bit weights, the Fisher-masked methods' gradient masks) is never sharded;
a cell whose sharded prediction is unknown runs sharded, unbudgeted.

Other runners on the same GPUs (another user, another suite, a second runner sharing a suite through cell locks)
read the same free memory from nvidia-smi as they start, which cannot see each other's budgets (a cell just started
has allocated little yet): every placement counts what they hold (`Packer.elsewhere`), read from the machine's GPU
ledger and written back in one locked step (bench/run/gpu_ledger.py; docs/scale.md), so together they never place
past a room, and a runner whose next cell only the others' cells keep out waits for them, in the order the runners
came to wait (the ledger's waiting claims: this runner's own order of cells is unchanged).

Everything here is pure (no torch, no CUDA): the runner, which forks cells, must never initialise CUDA, and the
scheduler is tested with fake devices (tests/test_packing.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bench.errors import BadInput
from bench.fmt import counted, size

MIB = 1024**2
MEMORY_MARGIN = 1.10  # over (predicted peak + OTHER_BYTES): see the module's docstring
OTHER_BYTES = 128 * MIB  # cuBLAS workspaces and kernels' own buffers the prediction leaves out (measured 64-82 MiB)
# Device memory a cell process holds outside its allocator: the CUDA context with torch's kernels loaded (typically
# 0.5-0.9 GiB on Hopper; benchmarks/gpu_packing.py measures it as NVML's peak minus the allocator's reserved peak).
CONTEXT_BYTES = 1024 * MIB


def cell_budget(memory: dict | None) -> int | None:
    """The allocator budget of a cell, in bytes, from its predicted memory section (bench.tools.plan_cost:
    predicted_memory); None when the prediction is unknown (then the cell runs alone)."""
    predicted = (memory or {}).get("predicted_peak_bytes")
    if not isinstance(predicted, int) or isinstance(predicted, bool) or predicted <= 0:
        return None
    return math.ceil(MEMORY_MARGIN * (predicted + OTHER_BYTES))


def footprint(budget: int) -> int:
    """What a cell with this budget takes of a device's room: its budget and its process's CUDA context."""
    return budget + CONTEXT_BYTES


@dataclass(frozen=True)
class Placement:
    """Where a cell runs: its device ("0,1": the devices a sharded cell runs over), and the budget its allocator is
    held to (None: the whole device, or devices, alone)."""

    device: str
    budget: int | None

    @property
    def alone(self) -> bool:
        return self.budget is None


class Packer:
    """The devices' room, and which cells hold it. `rooms`: the bytes each device has for cells (its free memory
    as the run starts). `place` answers where a cell starts now (None: wait for a cell to end), `release` gives
    its room back when it ends. Room that other runners hold (`elsewhere`) is not there: a device they hold any
    of is not empty."""

    def __init__(self, rooms: dict[str, int], gpus_per_cell: int = 1):
        if not rooms or not 1 <= gpus_per_cell <= len(rooms):
            raise ValueError(f"{gpus_per_cell} GPUs per cell on {len(rooms)} devices")
        self.rooms, self.gpus_per_cell = dict(rooms), gpus_per_cell
        self.used = {device: 0 for device in rooms}  # bytes of the footprints of the cells running there
        self.cells = {device: 0 for device in rooms}  # cells running there
        self.exclusive: set[str] = set()  # devices a cell holds alone
        # bytes other runners on this machine hold on each device (its room: held whole), as their ledger said at
        # this answer (bench/run/gpu_ledger.py sets it before each one): the Packer itself reads nothing
        self.elsewhere: dict[str, int] = {}

    def shares(self, budget: int | None) -> bool:
        """Whether a cell of this budget can share a device at all: it is known and fits some device's room."""
        return budget is not None and any(footprint(budget) <= room for room in self.rooms.values())

    def fits(self, budget: int, devices: int) -> bool:
        """Whether `devices` of the devices each have room for a cell of this budget (per device)."""
        return sum(footprint(budget) <= room for room in self.rooms.values()) >= devices

    def demand(self, memory: Callable[[int], dict | None], cell: str, bound: bool = True,
               shardable: bool = True) -> tuple[int | None, int]:
        """(budget per device, devices) a cell runs with, from `memory(shards)`, its predicted memory section on
        each of that many devices (bench.tools.plan_cost: predicted_memory): (its budget, 1) when it can share a
        device, when its prediction is unknown or when it runs alone on one; (its per-device budget sharded,
        gpus_per_cell) when it cannot share and that budget fits gpus_per_cell devices, (None, gpus_per_cell) when
        that budget is unknown (sharded as it asks: unknown is no verdict). BadInput, naming `cell` and the
        numbers, when neither its sharded budget fits nor its bare prediction fits the largest device, and the
        prediction is a lower `bound` of its peak (the measured peaks were never below it: docs/scale.md); a
        prediction that may run other than the peak (bound False: its `not_modelled` or `upper_bound` says why) refuses
        nothing, the cell runs alone on the largest device. A cell that cannot be sharded (not `shardable`: a method
        FSDP2 cannot run, Method.unshardable) is sized as with gpus_per_cell 1: its sharded memory is never asked."""
        unsharded = memory(1)
        budget = cell_budget(unsharded)
        if budget is None or self.shares(budget):
            return budget, 1
        sharded = None
        shards = self.gpus_per_cell if shardable else 1
        if shards > 1:
            sharded = memory(shards)
            sharded_budget = cell_budget(sharded)
            if sharded_budget is None:
                return None, shards
            if self.fits(sharded_budget, shards):
                return sharded_budget, shards
        largest = max(self.rooms.values())
        if not bound or unsharded["predicted_peak_bytes"] + CONTEXT_BYTES <= largest:
            return budget, 1
        raise BadInput(_too_large(cell, unsharded, sharded, shards, sorted(self.rooms.values())),
                       "--gpus-per-cell", _SMALLER)

    def where(self, budget: int | None, alone: bool = False, devices: int = 1) -> Placement | None:
        """Where a cell of this budget would start now, or None while no device has room; nothing is taken. A cell
        that shares goes to the device its footprint fills best (the least room left that still fits: big gaps stay
        for big cells); a cell that runs alone (`alone`, or it cannot share) takes an empty device, the largest; a
        sharded one (`devices` > 1, `budget` per device: Packer.demand) takes that many empty devices its budget
        fits, the largest first, each whole."""
        if devices > 1 or alone or not self.shares(budget):
            empty = sorted((d for d in self.rooms if self.cells[d] == 0 and not self.elsewhere.get(d)),
                           key=lambda d: -self.rooms[d])
            if devices > 1 and budget is not None:  # an unknown sharded budget takes any empty devices
                empty = [d for d in empty if footprint(budget) <= self.rooms[d]]
            return Placement(",".join(empty[:devices]), None) if len(empty) >= devices else None
        need = footprint(budget)
        left = {d: self.rooms[d] - self.used[d] - self.elsewhere.get(d, 0) - need for d in self.rooms}
        fitting = [d for d in self.rooms if d not in self.exclusive and left[d] >= 0]
        if not fitting:
            return None
        order = list(self.rooms)
        return Placement(min(fitting, key=lambda d: (left[d], order.index(d))), budget)

    def place(self, budget: int | None, alone: bool = False, devices: int = 1) -> Placement | None:
        """`where`, and the room it names taken until `release`."""
        placement = self.where(budget, alone, devices)
        if placement is None:
            return None
        if placement.alone:
            for device in placement.device.split(","):
                self.cells[device] += 1
                self.exclusive.add(device)
        else:
            self.cells[placement.device] += 1
            self.used[placement.device] += footprint(budget)
        return placement

    def release(self, placement: Placement) -> None:
        if placement.alone:
            for device in placement.device.split(","):
                self.cells[device] -= 1
                self.exclusive.discard(device)
        else:
            self.cells[placement.device] -= 1
            self.used[placement.device] -= footprint(placement.budget)


# What lowers a cell's memory per device, for the refusal of a cell that fits no device (Packer.demand)
_SMALLER = ("--gpus-per-cell G (more GPUs to shard over)", "--pack off (every cell alone on a GPU, unrefused)",
            "train.gradient_checkpointing: true",
            "train.weights_dtype: bf16", "train.kernels: liger (LLaMA-family models)",
            "a smaller train.batch_size or max_length", "GPUs with more free memory")


def _too_large(cell: str, unsharded: dict, sharded: dict | None, gpus_per_cell: int, rooms: list[int]) -> str:
    """Why a cell fits no device: its predictions against the devices' rooms, all in bytes and GB."""
    def peak(memory: dict | None) -> str:
        value = (memory or {}).get("predicted_peak_bytes")
        return "unknown" if cell_budget(memory) is None else f"{size(value)} ({value:,} B)"

    shown = f"its predicted peak is {peak(unsharded)} on one GPU"
    if gpus_per_cell > 1:
        shown += f" and {peak(sharded)} on each of {gpus_per_cell} sharded over them (FSDP2)"
        if cell_budget(sharded) is not None:
            shown += (f", a budget of {size(cell_budget(sharded))} with the margins, which with its context "
                      f"{gpus_per_cell} GPUs must each have room for (the {gpus_per_cell} with the most room have "
                      f"{size(rooms[-gpus_per_cell])} or more)")
    return (f"{cell} fits no GPU of --gpus: {shown}, and with {size(CONTEXT_BYTES)} of CUDA context a cell "
            f"has at most {size(rooms[-1] - CONTEXT_BYTES)} of the largest GPU's {size(rooms[-1])} free "
            f"({counted(len(rooms), 'GPU')}; docs/scale.md). Shard it over more GPUs, or make it smaller")


def packing_order(cells: list, budgets: dict[str, int | None]) -> list:
    """The order cells are started in, by their budgets (cell id -> bytes or None): the cells that run alone first
    (each needs an empty device, which is easiest to find at the start), then the rest largest first (first fit
    decreasing: small cells fill the gaps big ones leave). Equal budgets keep the grid's order."""
    def key(cell) -> tuple[int, int]:
        budget = budgets.get(cell.id)
        return (0, 0) if budget is None else (1, -budget)

    return sorted(cells, key=key)
