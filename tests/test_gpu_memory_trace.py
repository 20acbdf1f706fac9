"""benchmarks/gpu_memory_trace.py: the replay of an allocator trace, checked against a trace computed by hand (the
tracing itself needs CUDA: it runs in benchmarks/gpu_session.sh on a GPU)."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_memory_trace.py"
spec = importlib.util.spec_from_file_location("gpu_memory_trace", SCRIPT)
trace = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trace)


def frame(path, name, line=1):
    return {"filename": path, "line": line, "name": name}


def test_reduced_keeps_the_harness_and_library_frames_of_allocations_only():
    snapshot = {"device_traces": [[
        {"action": "alloc", "addr": 1, "size": 512, "stream": 0,
         "frames": [frame("/usr/lib/python3.12/contextlib.py", "__enter__"),
                    frame("/site/transformers/models/roberta/modeling_roberta.py", "forward", 7),
                    frame("/repo/bench/cell/train.py", "step", 9)]},
        {"action": "free_requested", "addr": 1, "size": 512, "stream": 0,
         "frames": [frame("/repo/bench/cell/train.py", "step", 9)]},
    ]]}
    alloc, free = trace.reduced(snapshot)
    assert alloc["frames"] == [("/site/transformers/models/roberta/modeling_roberta.py", 7, "forward"),
                               ("/repo/bench/cell/train.py", 9, "step")]
    assert free["frames"] == [] and free["size"] == 512


def test_replay_finds_the_peak_and_what_is_alive_at_it():
    """Requested bytes (the history's sizes), from the window's opening bytes; a block allocated before the window
    counts when freed; a free counts at its request, not again at its completion; backward's frameless blocks group
    together."""
    linear = [("/site/torch/nn/functional.py", 5, "linear"), ("/repo/bench/cell/train.py", 9, "step")]
    norm = [("/site/torch/nn/functional.py", 7, "layer_norm"), ("/repo/bench/cell/train.py", 9, "step")]
    events = [
        {"action": "alloc", "addr": 10, "size": 1000, "frames": norm},        # 1000 + 1000
        {"action": "alloc", "addr": 11, "size": 300, "frames": []},           # backward thread: 2300
        {"action": "free_requested", "addr": 99, "size": 200, "frames": []},  # allocated before the window: 2100
        {"action": "free_completed", "addr": 99, "size": 200, "frames": []},  # already counted at the request
        {"action": "alloc", "addr": 12, "size": 400, "frames": linear},       # 2500
        {"action": "alloc", "addr": 13, "size": 100, "frames": []},           # 2600: the peak
        {"action": "free_requested", "addr": 10, "size": 1000, "frames": []},  # 1600
        {"action": "alloc", "addr": 14, "size": 600, "frames": linear},       # 2200
    ]
    found = trace.replay(events, opening=1000)
    assert (found["peak"], found["peak_at"]) == (2600, 5)
    assert dict(found["groups"]) == {"layer_norm (functional.py:7)": [1000], "backward": [300, 100],
                                     "linear (functional.py:5)": [400]}


def test_worst_cells_are_the_furthest_from_the_measured_peak(tmp_path):
    folder = tmp_path / "results" / "s"
    folder.mkdir(parents=True)
    for i, (label, predicted, measured, status) in enumerate([("a", 95, 100, "ok"), ("b", 70, 100, "ok"),
                                                               ("c", 120, 100, "ok"), ("d", 10, 100, "failed"),
                                                               ("e", None, 100, "ok")]):
        (folder / f"{i}.json").write_text(json.dumps({
            "status": status, "cell": {"suite": "s", "id": f"id{i}", "label": label},
            # training's phase of the prediction (weights + optimizer + step peak) against training's measured peak
            "memory": {"predicted_peak_bytes": predicted, "device_peak_allocated_bytes": measured,
                       "weights_bytes": 0, "optimizer_bytes": 0, "step_peak_bytes": predicted}}))
    found = trace.worst_cells(tmp_path, 2)
    assert [(f[2], round(f[3], 2)) for f in found] == [("b", 0.7), ("c", 1.2)]
    assert found[0][0] == tmp_path / "s.yaml"
