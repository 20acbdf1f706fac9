"""What the CUDA allocator holds at a cell's training peak, allocation by allocation: the evidence for the terms
the memory prediction lacks (docs/measurement.md, "Predicted vs measured").

    PYTHONPATH=. python benchmarks/gpu_memory_trace.py --work DIR --out traces.tar   # on a GPU, after gpu_check
    PYTHONPATH=. python benchmarks/gpu_memory_trace.py --read traces.tar             # anywhere: the breakdown
    PYTHONPATH=. python benchmarks/gpu_memory_trace.py --smoke                       # anywhere: hand-made traces

The first form reads the records gpu_check.py left in DIR (its --workdir), picks the cells whose prediction is
furthest from the measured peak (--cells, default 3) and runs each again, in a process of its own, with the
allocator's history on over the training window, the window whose peak the record's
`memory.device_peak_allocated_bytes` is (torch.cuda.memory._record_memory_history, Python frames only). Each trace
is cut down to the frames of the harness, transformers, peft and torch.nn and saved with the cell's new record and
the allocator's requested bytes as the window opened and at its peak.

The second form replays each trace. The history gives each allocation's *requested* size, which is what a
tensor's storage holds and what the step probe counts; the allocator's `allocated` figures count whole blocks,
each rounded up to 512 bytes, and a cached block of 1 MiB or more is handed out unsplit when what would remain is
small. So the replay sums requested bytes: the window's opening bytes, plus each allocation, minus each block a
free request returns. It prints their peak beside the allocator's own requested peak (they agree when the trace is
whole) and its allocated peak (the record's), and lists the blocks allocated in the window still alive at the
peak, grouped by where they were allocated: the innermost kept frame. Allocations by autograd's backward thread
carry no Python frame: they are grouped as "backward".

Tracing needs CUDA, so `--smoke` (what the tests run) takes the first form's path on records and traces made by
hand, in a temporary folder: the choice of cells, the trace's reduction, the tar file and its replay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, mib, work_folder  # noqa: E402

KEPT = ("/bench/", "/transformers/", "/peft/", "/torch/nn/", "/torch/optim/", "/bitsandbytes/")
FRAMES = 8  # innermost kept frames per event


def worst_cells(work: Path, count: int) -> list[tuple[Path, str, str, float]]:
    """(suite file, cell id, label, predicted/measured) of the ok cells furthest from 1, worst first: training's
    phase of the prediction over training's measured peak."""
    from bench.cell.measure import training_peak

    found = []
    for path in (work / "results").glob("*/*.json"):
        r = json.loads(path.read_text())
        m = r["memory"]
        predicted = training_peak(m)  # against training's window, as device_peak_allocated_bytes is
        if r["status"] == "ok" and m.get("device_peak_allocated_bytes") and predicted:
            ratio = predicted / m["device_peak_allocated_bytes"]
            found.append((work / f"{r['cell']['suite']}.yaml", r["cell"]["id"], r["cell"]["label"], ratio))
    return sorted(found, key=lambda f: -abs(f[3] - 1))[:count]


def reduced(snapshot: dict) -> list[dict]:
    """Device 0's trace, each allocation's frames cut to the kept ones (strings shared: the pickle stays small)."""
    strings: dict[str, str] = {}
    events = []
    for e in snapshot["device_traces"][0]:
        kept = [f for f in e.get("frames") or () if any(k in f["filename"] for k in KEPT)][:FRAMES]
        frames = [(strings.setdefault(f["filename"], f["filename"]), f["line"],
                   strings.setdefault(f["name"], f["name"])) for f in kept]
        frames = frames if e["action"] == "alloc" else []  # where a block was freed is not asked
        events.append({"action": e["action"], "addr": e.get("addr"), "size": e.get("size", 0),
                       "stream": e.get("stream"), "frames": frames})
    return events


def trace_cell(suite: str, cell_id: str, out: str) -> None:
    """Run one cell in this process, the allocator's history on over its training window; save its record, the
    requested bytes as the window opened and at its peak, and the reduced trace."""
    import torch

    from bench.cell import instruments
    from bench.cell.recipe import run_cell
    from bench.plan.grid import expand
    from bench.plan.suite import load_suite

    (cell,) = [c for c in expand(load_suite(suite)) if c.id == cell_id]
    captured = {}
    window = instruments.TrainingPeak.training

    @contextlib.contextmanager
    def traced(self, run, record):
        with window(self, run, record):  # the peaks are reset as the window opens: the history starts after it
            captured["opening"] = torch.cuda.memory_stats()["requested_bytes.all.current"]
            torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
            try:
                yield
            finally:
                captured["requested_peak"] = torch.cuda.memory_stats()["requested_bytes.all.peak"]
                captured["events"] = reduced(torch.cuda.memory._snapshot())
                torch.cuda.memory._record_memory_history(enabled=None)

    instruments.TrainingPeak.training = traced
    record = run_cell(cell, quiet=True)
    save_trace(out, record, **captured)


def save_trace(out: str | Path, record: dict, opening: int, requested_peak: int, events: list[dict]) -> None:
    with lzma.open(out, "wb") as f:
        pickle.dump({"record": record, "opening": opening, "requested_peak": requested_peak, "events": events}, f)


def trace_worst(work: Path, cells: int, out: str | Path, trace) -> int:
    """Trace the `cells` worst-predicted cells of gpu_check's folder `work` into the tar file `out` (each by
    `trace(suite, cell id, trace file)`, True when it wrote the file), then print their breakdowns. Returns the
    exit code: 1 when a trace failed."""
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(out, "w") as tar:
        for suite, cell_id, label, ratio in worst_cells(work, cells):
            print(f"tracing {label} ({suite.stem}, predicted/measured {ratio:.2f})", flush=True)
            path = Path(tmp) / f"{suite.stem}-{label}.pkl.xz"
            if not trace(suite, cell_id, path) or not path.exists():
                failed += 1
                continue
            tar.add(path, arcname=path.name)
    print(read(Path(out), 12), flush=True)
    return 1 if failed else 0


def trace_in_a_process(suite: Path, cell_id: str, out: Path) -> bool:
    """The cell traced by this script's worker, in a process of its own (the allocator's history is per process)."""
    done = subprocess.run([sys.executable, __file__, "--worker", str(suite), cell_id, str(out)], cwd=REPO)
    return done.returncode == 0


def smoke_records(work: Path) -> None:
    """Records as gpu_check.py leaves them: three ok cells of one suite, predicted 0.95, 0.7 and 1.2 of the measured
    peak, and a failed one."""
    folder = work / "results" / "gpu-check-smoke"
    folder.mkdir(parents=True)
    for i, (label, predicted, status) in enumerate([("lora", 95, "ok"), ("full", 70, "ok"), ("ia3", 120, "ok"),
                                                     ("dora", 10, "failed")]):
        record = {"status": status, "cell": {"suite": "gpu-check-smoke", "id": f"cell{i}", "label": label,
                                             "model": str(work / "decoder")},
                  "memory": {"predicted_peak_bytes": predicted * 2**20, "device_peak_allocated_bytes": 100 * 2**20,
                             "weights_bytes": 40 * 2**20, "optimizer_bytes": 0,
                             "step_peak_bytes": (predicted - 40) * 2**20}}
        (folder / f"cell{i}.json").write_text(json.dumps(record))


def smoke_trace(suite: Path, cell_id: str, out: Path) -> bool:
    """trace_cell's result for a hand-made allocator history (torch's snapshot format): weights before the window,
    then activations in the forward (frames in transformers and the harness), the backward's frameless blocks, and
    their frees."""
    record = json.loads((suite.parent / "results" / suite.stem / f"{cell_id}.json").read_text())
    forward = [{"filename": "/site/transformers/models/llama/modeling_llama.py", "line": 7, "name": "forward"},
               {"filename": "/repo/bench/cell/train.py", "line": 9, "name": "step"}]
    snapshot = {"device_traces": [[
        {"action": "alloc", "addr": 1, "size": 30 * 2**20, "stream": 0, "frames": forward},
        {"action": "alloc", "addr": 2, "size": 20 * 2**20, "stream": 0, "frames": []},
        {"action": "free_requested", "addr": 1, "size": 30 * 2**20, "stream": 0, "frames": forward},
        {"action": "free_completed", "addr": 1, "size": 30 * 2**20, "stream": 0, "frames": []},
        {"action": "alloc", "addr": 3, "size": 10 * 2**20, "stream": 0, "frames": forward}]]}
    save_trace(out, record, opening=40 * 2**20, requested_peak=90 * 2**20, events=reduced(snapshot))
    return True


def replay(events: list[dict], opening: int) -> dict:
    """The window's peak of requested bytes and the blocks allocated in it alive at that moment (see the module's
    docstring)."""
    live: dict[int, int] = {}  # addr -> index of its allocation event
    requested, peak, peak_at, peak_live = opening, opening, None, {}
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            live[e["addr"]] = i
            requested += e["size"]
        elif e["action"] == "free_requested":  # a block allocated before the window counts too
            live.pop(e["addr"], None)
            requested -= e["size"]
        if requested > peak:
            peak, peak_at, peak_live = requested, i, dict(live)
    groups: dict[str, list[int]] = defaultdict(list)
    for i in peak_live.values():
        frames = events[i]["frames"]
        groups["backward" if not frames else f"{frames[0][2]} ({Path(frames[0][0]).name}:{frames[0][1]})"].append(
            events[i]["size"])
    return {"peak": peak, "peak_at": peak_at, "events": len(events), "groups": groups}


def read(path: Path, top: int) -> str:
    lines = []
    with tarfile.open(path) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.name.endswith(".pkl.xz"):
                continue
            data = pickle.loads(lzma.decompress(tar.extractfile(member).read()))
            m, found = data["record"]["memory"], replay(data["events"], data["opening"])
            lines.append(f"## {member.name}: {data['record']['cell']['label']} on "
                         f"{Path(data['record']['cell']['model']).name} ({data['record']['status']})")
            allocator = data.get("requested_peak")  # absent from the traces of 2026-11-30, opened at allocated bytes
            lines.append(f"events {found['events']}; opening {mib(data['opening'], '.3f')} MiB; replayed peak "
                         f"{mib(found['peak'], '.3f')} MiB (event {found['peak_at']}); the allocator's requested peak "
                         f"{mib(allocator, '.3f')}; record: device (allocated) peak "
                         f"{mib(m.get('device_peak_allocated_bytes'), '.3f')}, "
                         f"predicted {mib(m.get('predicted_peak_bytes'), '.3f')}, "
                         f"weights {mib(m.get('weights_bytes'), '.3f')}, "
                         f"optimizer {mib(m.get('optimizer_bytes'), '.3f')}, "
                         f"step peak {mib(m.get('step_peak_bytes'), '.3f')}, "
                         f"other {mib(m.get('device_other_bytes'), '.3f')} MiB")
            ranked = sorted(found["groups"].items(), key=lambda g: -sum(g[1]))
            for site, sizes in ranked[:top]:
                lines.append(f"  {sum(sizes) / 2**20:10.1f} MiB  {len(sizes):5d} blocks  {site}")
            rest = sum(sum(s) for _, s in ranked[top:])
            lines.append(f"  {rest / 2**20:10.1f} MiB  in {max(0, len(ranked) - top)} other sites")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="gpu_check.py's --workdir (its records and suites)")
    p.add_argument("--cells", type=int, default=3, help="how many of the worst-predicted cells to trace")
    p.add_argument("--out", help="the tar file of traces to write")
    p.add_argument("--read", help="a tar file of traces: print each cell's breakdown at its training peak")
    p.add_argument("--top", type=int, default=25, help="--read: the allocation sites to list per cell")
    p.add_argument("--smoke", action="store_true", help="hand-made records and traces, no CUDA (what the tests run)")
    p.add_argument("--worker", nargs=3, metavar=("SUITE", "CELL", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        trace_cell(*args.worker)
        return 0
    if args.read:
        print(read(Path(args.read), args.top))
        return 0
    if args.smoke:
        with work_folder("peft-bench-gpu-trace-") as work:
            smoke_records(work)
            return trace_worst(work, args.cells, work / "traces.tar", smoke_trace)
    if not (args.work and args.out):
        p.error("give --work and --out (trace on a GPU), or --read, or --smoke")
    return trace_worst(Path(args.work), args.cells, args.out, trace_in_a_process)


if __name__ == "__main__":
    sys.exit(main())
