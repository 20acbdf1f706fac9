"""GPU packing: cells per hour with cells packed onto the GPUs by predicted memory (`run --gpus --pack memory`)
against one cell per GPU at a time (`--pack off`), on a grid of RoBERTa-base-shaped cells with synthetic data,
and how close each packed cell's allocator came to its budget (bench/run/packing.py's margin).

    PYTHONPATH=. python benchmarks/gpu_packing.py [--out docs/measurements/gpu-packing-DATE.md]   # GPUs, ~3 min
    PYTHONPATH=. python benchmarks/gpu_packing.py --device cpu        # the same path at toy size, fake GPUs
    PYTHONPATH=. python benchmarks/gpu_packing.py --smoke             # two cells of it (tests)

Both runs go through the runner and the local executor as `peft-bench run --gpus all` does (here through its
Python API, so that the CPU run can hand the executor fake GPUs: indices no machine has, whose cells run on the
CPU, with a stated room). The grid: 6 methods x 2 seeds of a random-init RoBERTa-base checkpoint (fp32 weights,
bf16 autocast, batch 32 x 128, 40 steps), a local task of 128-word rows, so nothing comes from the hub. The
checkpoint is made and the data tokenised (one untimed cell, into the cache both runs share) before either run;
each run is a fresh process, as a `peft-bench run` is, so each starts its own fork server, and the packed run's
time includes predicting every cell's memory. Per packed cell: its budget, predicted peak, the allocator's
allocated and reserved peaks, reserved peak / budget (the margin's test: under 1 means the budget held), NVML's
peak less the reserved peak (the CUDA context packing counts as CONTEXT_BYTES), and how many cells ran beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    REPO,
    child_env,
    mib,
    run_checked,
    save_random_model,
    work_folder,
    write_long_task,
    write_suite,
)

METHODS = ["full", "lora", "bitfit", "head-only", "ia3", "prompt-tuning"]
FAKE_GPUS = {"90": 8 * 1024**3}  # --device cpu: one GPU index no machine has, with a stated room


def build(work: Path, smoke: bool) -> tuple[Path, Path]:
    import torch
    import transformers as tf

    from bench import tiny

    if smoke:
        config = tiny.config("roberta", len(tiny.tokenizer()))
    else:
        fields = json.loads((REPO / "bench" / "configs" / "roberta-base.json").read_text())
        config = tf.AutoConfig.for_model(fields.pop("model_type"), **fields)
    save_random_model(work / "encoder", config, tf.AutoModelForMaskedLM, torch.float32)
    tasks = write_long_task(work, 140, {"train": 128 if smoke else 2048, "eval": 64}, "128-word rows, binary label")
    return work / "encoder", tasks


def write_grid(work: Path, model: Path, tasks: Path, smoke: bool) -> Path:
    methods, seeds = (["lora", "bitfit"], [1]) if smoke else (METHODS, [1, 2])
    train = ({"batch_size": 4, "max_steps": 3, "max_length": 32} if smoke else
             {"batch_size": 32, "max_steps": 40, "max_length": 128, "precision": "bf16"})
    return write_suite(work, "gpu-packing", methods=methods, models=[str(model)], tasks=["long-binary"],
                       seeds=seeds, task_files=[str(tasks)], cell_timeout_s=600,
                       train={**train, "eval_batch_size": 64, "max_eval_samples": 64})


def worker(mode: str, suite: Path, results: Path, smoke: bool) -> dict:
    """One run of the grid (`mode`: warm-up, one cell; serial; packed) from an empty store: its wall seconds."""
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.run.executors.local import LocalExecutor, device_rooms, visible_gpus
    from bench.run.runner import run_grid
    from bench.run.store import Store
    from bench.tools.plan_cost import predicted_memory

    cells = grid.expand(load_suite(str(suite)), threads=1 if smoke else None)
    gpus = list(FAKE_GPUS) if smoke else visible_gpus()
    pack = mode == "packed"
    rooms = (FAKE_GPUS if smoke else device_rooms(gpus)) if pack else None
    if pack and rooms is None:
        raise SystemExit("nvidia-smi gave no memory for the GPUs: nothing to pack onto")
    executor = LocalExecutor(quiet=True, gpus=gpus, rooms=rooms, predicted_memory=predicted_memory if pack else None)
    start = time.monotonic()
    run_grid(cells[:1] if mode == "warm-up" else cells, Store(results), executor, quiet=True)
    return {"wall_s": time.monotonic() - start}


def run(mode: str, suite: Path, work: Path, env: dict, smoke: bool) -> tuple[float, dict]:
    """A run in a process of its own: its wall seconds and its records by cell id."""
    results, out = work / f"results-{mode}", work / f"{mode}.json"
    run_checked([sys.executable, __file__, "--device", "cpu" if smoke else "cuda", "--worker", mode, str(suite),
                 str(results), str(out)], f"the {mode} run", cwd=REPO, env=env)
    records = [json.loads(p.read_text()) for p in (results / "gpu-packing").glob("*.json")]
    return json.loads(out.read_text())["wall_s"], {r["cell"]["id"]: r for r in records}


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "–"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the toy-size run on fake GPUs")
    p.add_argument("--smoke", action="store_true", help="--device cpu, two cells, in a folder removed at the end")
    p.add_argument("--out", help="also write the tables (Markdown) to this file")
    p.add_argument("--workdir", help="keep the checkpoint and records here (default: a temporary folder)")
    p.add_argument("--worker", nargs=4, metavar=("MODE", "SUITE", "RESULTS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.device = "cpu"
    smoke = args.device == "cpu"
    if args.worker:
        mode, suite, results, out = args.worker
        Path(out).write_text(json.dumps(worker(mode, Path(suite), Path(results), smoke)))
        return 0
    with work_folder("peft-bench-gpu-packing-", keep=not args.smoke, given=args.workdir) as work:
        env = child_env(REPO, cache=work / "cache", **({"CUDA_VISIBLE_DEVICES": ""} if smoke else {}))
        model, tasks = build(work, smoke)
        suite = write_grid(work, model, tasks, smoke)
        run("warm-up", suite, work, env, smoke)
        runs = {}
        for name, mode in (("packed", "packed"), ("one at a time", "serial")):
            runs[name] = run(mode, suite, work, env, smoke)
            print(f"{name}: {runs[name][0]:.1f} s", file=sys.stderr, flush=True)
        lines = ["| run | cells | ok | wall s | cells/hour | most cells beside one |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name, (wall, records) in runs.items():
            ok = sum(r["status"] == "ok" for r in records.values())
            beside = max((r["env"].get("cells_beside") or 0 for r in records.values()), default=0)
            lines.append(f"| {name} | {len(records)} | {ok} | {wall:.1f} | {3600 * len(records) / wall:.0f} "
                         f"| {beside} |")
        serial, packed = runs["one at a time"][0], runs["packed"][0]
        lines.append(f"\npacked / one at a time: {ratio(serial, packed)} x the cells per hour")
        lines += ["", "| method | seed | status | budget MiB | predicted MiB | allocated peak MiB | reserved peak MiB "
                  "| reserved / budget | NVML - reserved MiB | cells beside |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(runs["packed"][1].values(), key=lambda r: (r["cell"]["label"], r["cell"]["seed"])):
            m, budget = r["memory"], r["env"].get("device_budget_bytes")
            reserved, nvml = m.get("device_peak_reserved_bytes"), m.get("nvml_peak_bytes")
            context = nvml - reserved if nvml and reserved else None
            lines.append(f"| {r['cell']['label']} | {r['cell']['seed']} | {r['status']} | {mib(budget)} | "
                         f"{mib(m.get('predicted_peak_bytes'))} | {mib(m.get('device_peak_allocated_bytes'))} | "
                         f"{mib(reserved)} | {ratio(reserved, budget)} | {mib(context)} | "
                         f"{r['env'].get('cells_beside')} |")
        head = f"gpu_packing ({'cpu smoke, fake GPUs' if smoke else 'cuda'}), work folder {work}"
        text = head + "\n\n" + "\n".join(lines) + "\n"
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        statuses = [r["status"] for _, records in runs.values() for r in records.values()]
    return 0 if statuses and all(s == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
