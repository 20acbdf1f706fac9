"""GPU performance: MFU of full fine-tuning and LoRA on a 1.1B LLaMA-shaped model at 16k tokens per step, the
harness's step time against a plain PyTorch loop on the same model and batch, and the harness's load time.

    PYTHONPATH=. python benchmarks/gpu_perf.py [--out docs/measurements/gpu-perf-DATE.md]   # one GPU, <= 6 min
    PYTHONPATH=. python benchmarks/gpu_perf.py --device cpu                                # smoke, any machine
    PYTHONPATH=. python benchmarks/gpu_perf.py --smoke                                     # its LoRA row (tests)
    PYTHONPATH=. python benchmarks/gpu_perf.py --options compile,liger     # + a harness row per method and option

The model is random-init (TinyLlama's shape: 22 layers of 2048, 4 key/value heads, 32k vocabulary; 1.10B
parameters) saved as a local bf16 checkpoint, the task a local one of 1,024-token rows, so nothing comes
from the hub. Each harness cell runs in its own process (bf16 autocast; full fine-tuning keeps fp32 weights,
LoRA loads them in bf16, as their users do); the plain loop runs in another process on the same checkpoint,
batches and optimizer (fused AdamW, autocast bf16, gradient clipping) and times its steps the way the harness
does (CUDA synchronised). MFU is given twice: the record's `time.mfu` (the counted training FLOPs over the whole
training time, the first step's warm-up included: bench/figures.py) and the same FLOPs per step over the median
step, which is what the goal is about; both against the device's datasheet peak (bench/cell/measure.py). Goals
(docs/performance.md): MFU >= 40 % for full fine-tuning, harness step <= 1.03 x plain.

`--options`: speed options (docs/performance.md, "Speed options") measured as more harness cells, one per method
and option: `compile` (train.compile: torch.compile, its warm-up not in the step times) and `liger`
(train.kernels: liger, Liger's fused kernels; it needs liger-kernel, carried as a wheel, and CUDA: a machine
without them gets the run's refusal in the row). Their plain-loop columns are empty: the plain loop runs
without options.

Memory, every harness row: the peak the runner predicts for the cell (`estimate` with the cell's shape, weights
dtype and kernels: what `--gpus` packs by, bench/tools/plan_cost.py; Liger's kernels as bench/tools/liger_memory.py
models them), the cell's own probe (training's phase of `memory.predicted_peak_bytes`, as the measured peak is
training's window: bench/cell/measure.py training_peak) and the allocator's measured peak, in GiB, and
then, per method, what liger saved against torch, measured, and predicted for bf16 weights (LoRA). The estimate
models the cell's bf16 autocast (bench/tools/cuda_step.py), but not the other path liger's fused loss takes over
fp32 weights under autocast (full fine-tuning here): that row's liger saving is not predicted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, child_env, save_random_model, work_folder, write_long_task, \
    write_suite  # noqa: E402

TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
METHODS = {"full": {"weights_dtype": "fp32", "lr": 2e-5}, "lora": {"weights_dtype": "bf16", "lr": 2e-4}}
OPTIONS = {"compile": {"compile": True}, "liger": {"kernels": "liger"}}  # --options: each one's train settings


def sizes(smoke: bool) -> dict:
    return ({"batch": 2, "length": 64, "steps": 4} if smoke else {"batch": 16, "length": 1024, "steps": 12})


def build(folder: Path, smoke: bool) -> tuple[Path, Path]:
    """The checkpoint (random init, bf16) and a task file of rows that fill the length."""
    import torch
    import transformers as tf

    from bench import tiny

    config = (tiny.config("llama", len(tiny.tokenizer())) if smoke else
              tf.LlamaConfig(**TINYLLAMA, pad_token_id=tiny.PAD, bos_token_id=tiny.BOS, eos_token_id=tiny.EOS))
    count = save_random_model(folder / "model", config, tf.AutoModelForCausalLM, torch.bfloat16)
    print(f"built {count / 1e9:.3f}B parameters", file=sys.stderr)
    # every lexicon word is one token: rows are cut at the length
    tasks = write_long_task(folder, sizes(smoke)["length"] + 16, {"train": 512, "eval": 16},
                            "rows as long as the length, binary label", main_metric=False)
    return folder / "model", tasks


def harness(work: Path, model: Path, tasks: Path, method: str, smoke: bool, env: dict, option: str | None = None) \
        -> dict:
    """The harness cell's record; with `option`, under that speed option (a refused run: SystemExit with why)."""
    s, settings = sizes(smoke), METHODS[method]
    name = f"perf-{method}" + (f"-{option}" if option else "")
    suite = write_suite(work, name, methods=[method], models=[str(model)], tasks=["long-binary"],
                        seeds=[1], task_files=[str(tasks)], cell_timeout_s=900,
                        train={"batch_size": s["batch"], "max_steps": s["steps"], "max_length": s["length"],
                               "lr": settings["lr"], "weights_dtype": settings["weights_dtype"],
                               "precision": "fp32" if smoke else "bf16", "eval_batch_size": s["batch"],
                               "max_eval_samples": s["batch"], **OPTIONS.get(option, {})})
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", str(suite), "--results",
                           str(work / "results"), "--force", "--quiet"], env=env, cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:  # 2: the run refused the cell before any work (an option this machine cannot run)
        said = " ".join((done.stderr.strip().splitlines() or ["no output"])[-1].split())
        raise (Refused if done.returncode == 2 else SystemExit)(f"the run ended with exit {done.returncode}: {said}")
    (path,) = (work / "results" / name).glob("*.json")
    return json.loads(path.read_text())


class Refused(Exception):
    """The harness refused a cell before any work (`peft-bench run` exit 2): what it said."""


GIB = 1024**3


def memory_cells(record: dict, model: Path, method: str, smoke: bool, option: str | None,
                 predictions: dict) -> list[str]:
    """The peak predicted by the runner's estimate, by the cell's probe, and measured (the allocator), GiB, and
    measured / estimated. `predictions` keeps each (method, kernels) estimate: compile does not change it."""
    from bench.cell.measure import training_peak
    from bench.tools.estimate import estimate

    kernels, s = OPTIONS.get(option, {}).get("kernels", "torch"), sizes(smoke)
    if (method, kernels) not in predictions:
        predicted = estimate(str(model), method, s["batch"], s["length"], dtype=METHODS[method]["weights_dtype"],
                             kernels=kernels, precision="fp32" if smoke else "bf16",
                             step_device="cpu" if smoke else "cuda")["memory"]
        predictions[method, kernels] = training_peak(predicted)  # device_peak_allocated_bytes is training's
    estimated, memory = predictions[method, kernels], record.get("memory") or {}
    probed, measured = training_peak(memory), memory.get("device_peak_allocated_bytes")

    def gib(value) -> str:
        return f"{value / GIB:.2f}" if value else "–"

    return [gib(estimated), gib(probed), gib(measured), f"{measured / estimated:.3f}" if measured else "–"]


def savings(rows: dict, predictions: dict) -> list[str]:
    """Per method with a torch and a liger row: the peak liger saved, predicted (memory_cells' estimates) and
    measured. Predicted only for bf16 weights: over fp32 weights under a cell's bf16 autocast liger 0.8.5's fused
    loss takes another path than its memory twin models (no mm out=, bf16 logits and input gradient,
    the head's gradient through addmm: fused_linear_cross_entropy.py:43-47, 168, 322, 326-347), so the twin's
    saving is not the one such a cell makes."""
    lines = []
    for method, settings in METHODS.items():
        plain, liger = rows.get((method, None)), rows.get((method, "liger"))
        if plain is None or liger is None:
            continue
        allocated = [(r.get("memory") or {}).get("device_peak_allocated_bytes") for r in (plain, liger)]
        measured = f"{(allocated[0] - allocated[1]) / GIB:.2f} GiB" if all(allocated) else "– (no device peak)"
        if settings["weights_dtype"] != "bf16":
            lines.append(f"{method}: liger's peak saving, measured {measured}; not predicted for "
                         f"{settings['weights_dtype']} weights under autocast (Liger's path there is not modelled)")
            continue
        predicted = predictions[method, "torch"] - predictions[method, "liger"]
        lines.append(f"{method}: liger's peak saving, predicted {predicted / GIB:.2f} GiB, measured {measured}")
    return lines


def mfu_cells(record: dict) -> list[str]:
    """The two MFU columns: the record's FLOPs per step over the median step, and the record's own `time.mfu`."""
    t = record["time"]
    # the record's MFU is over the whole training time; the same FLOPs per step over the median step
    per_median = t["mfu"] * t["train_s"] / (record["train"]["steps"] * t["step_s_median"]) if t.get("mfu") else None
    return [f"{100 * m:.1f} %" if m is not None else "– (no datasheet peak)" for m in (per_median, t.get("mfu"))]


def one_cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "/")[:200]


def plain(model_dir: str, tasks_dir: str, method: str, smoke: bool) -> dict:
    """The same training steps without the harness: load, adapt (LoRA as the harness configures it on LLaMA),
    train. As the harness trains a decoder on a classification task: the causal LM's loss on the answer word
    after the prompt (rank classification's training side), padding on the right."""
    import peft
    import torch
    import transformers as tf

    s, settings = sizes(smoke), METHODS[method]
    device = "cpu" if smoke else "cuda"
    start = time.perf_counter()
    tokenizer = tf.AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.float32 if settings["weights_dtype"] == "fp32" else torch.bfloat16
    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                           target_modules=["q_proj", "v_proj"]))
    model.to(device).train()
    load_s = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(tasks_dir) / "train.jsonl").read_text().splitlines()]
    batches = []  # tokenised before the timed steps, as the harness tokenises before training
    for step in range(s["steps"]):
        examples = []
        for row in rows[step * s["batch"]:(step + 1) * s["batch"]]:
            answer = tokenizer(" " + ("yes" if row["label"] else "no"), add_special_tokens=False)["input_ids"]
            prompt = tokenizer(row["text"] + " label:")["input_ids"][: s["length"] - len(answer)]
            examples.append((prompt + answer, [-100] * len(prompt) + answer))
        width = max(len(ids) for ids, _ in examples)
        pad = tokenizer.pad_token_id
        batches.append({"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in examples]),
                        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids))
                                                        for ids, _ in examples]),
                        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in examples])})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], fused=True if device == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if not smoke else torch.autocast("cpu", enabled=False)
    def step(batch: dict) -> None:
        with autocast:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s = []
    for batch in batches:
        begin = time.perf_counter()
        step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - begin)
    return {"step_s_median": statistics.median(step_s[1:]), "load_s": load_s,
            **(kernels(step, batches[-2:]) if device == "cuda" else {})}


def kernels(step, batches) -> dict:
    """Where a step's GPU time goes (the profiler's kernels over two more steps, most time first), and the bf16
    matrix-product rate this GPU reaches (8192^3, ten products after three warm-ups), beside the datasheet peak
    that MFU is taken against."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            step(batch)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=70)
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return {"profile": table, "matmul_flops_per_s": 10 * 2 * 8192**3 / (time.perf_counter() - begin)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the smoke run at toy size")
    p.add_argument("--smoke", action="store_true",
                   help="--device cpu, the LoRA row only, in a folder removed at the end (what the tests run)")
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    p.add_argument("--workdir", help="keep the checkpoint and records here (default: a temporary folder)")
    p.add_argument("--options", default="", help="speed options to add rows for, comma-separated: "
                   + ", ".join(OPTIONS))
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "TASKS", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.device = "cpu"
    smoke = args.device == "cpu"
    if args.worker:
        print(json.dumps(plain(*args.worker, smoke)))
        return 0
    with work_folder("peft-bench-gpu-perf-", keep=not args.smoke, given=args.workdir) as work:
        return measure(args, work, smoke)


def measure(args, work: Path, smoke: bool) -> int:
    """The table, row by row: each method's harness cell and plain loop."""
    env = child_env(REPO, **({"CUDA_VISIBLE_DEVICES": ""} if smoke else {}))
    start = time.monotonic()
    options = [o for o in args.options.split(",") if o]
    if set(options) - set(OPTIONS):
        raise SystemExit(f"--options {args.options!r}: give some of {', '.join(OPTIONS)}, comma-separated")
    model, tasks = build(work, smoke)
    lines: list[str] = []
    rates: list[float] = []
    failed = False

    def show(line: str) -> None:  # row by row, so a run stopped by its time limit keeps the rows it made
        lines.append(line)
        print(line, flush=True)
        if args.out:
            Path(args.out).write_text(f"gpu_perf ({'cpu smoke' if smoke else 'cuda'}), work folder {work}\n\n"
                                      + "\n".join(lines) + "\n")

    show("| method | weights | tokens/step | harness step ms | plain step ms | harness / plain | MFU, median step "
         "| MFU, record | load s (harness, plain) | peak GiB, estimate | peak GiB, cell probe | peak GiB, measured "
         "| measured / estimate |")
    show("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    predictions: dict = {}
    rows: dict = {}  # (method, option) -> the ok record
    for method in ["lora"] if args.smoke else METHODS:
        record = harness(work, model, tasks, method, smoke, env)
        out = subprocess.run([sys.executable, __file__, "--device", args.device, "--worker", str(model),
                              str(tasks.parent), method], env=env, cwd=REPO, capture_output=True, text=True)
        base = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        t, s = record["time"], sizes(smoke)
        if record["status"] != "ok" or not t.get("step_s_median") or base is None:
            failed = True
            why = ((record.get("error") or {}).get("message") or "no step time") if record["status"] != "ok" else \
                f"the plain loop failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}"
            show(f"| {method} | {record['status']}: {one_cell(why)} | | | | | | | | | | | |")
            continue
        median, mfus = t["step_s_median"], mfu_cells(record)
        if base.get("profile"):  # into the log, not the table
            print(f"{method}: the plain loop's kernels over two steps, most GPU time first\n{base['profile']}")
            rates.append(base["matmul_flops_per_s"])
        show(f"| {method} | {record['train'].get('weights_dtype')} | {s['batch'] * s['length']} | "
             f"{1000 * median:.1f} | {1000 * base['step_s_median']:.1f} | {median / base['step_s_median']:.3f} | "
             f"{mfus[0]} | {mfus[1]} | {t['load_s']:.1f}, {base['load_s']:.1f} | "
             f"{' | '.join(memory_cells(record, model, method, smoke, None, predictions))} |")
        rows[method, None] = record
    for option in options:  # harness cells only: the plain loop runs without options
        for method in METHODS:
            try:
                record = harness(work, model, tasks, method, smoke, env, option)
            except Refused as e:  # this machine cannot run the option: said, not failed
                show(f"| {method} + {option} | refused: {one_cell(e)} | | | | | | | | | | | |")
                continue
            t, s = record["time"], sizes(smoke)
            if record["status"] != "ok" or not t.get("step_s_median"):
                failed = True
                show(f"| {method} + {option} | {record['status']}: "
                     f"{one_cell((record.get('error') or {}).get('message') or 'no step time')} | | | | | | | | | | "
                     "| |")
                continue
            compiled = f", compile {t['compile_s']:.0f} s" if t.get("compile_s") else ""
            show(f"| {method} + {option} | {record['train'].get('weights_dtype')} | {s['batch'] * s['length']} | "
                 f"{1000 * t['step_s_median']:.1f} | – | – | {' | '.join(mfu_cells(record))} | "
                 f"{t['load_s']:.1f}{compiled} | "
                 f"{' | '.join(memory_cells(record, model, method, smoke, option, predictions))} |")
            rows[method, option] = record
    for line in savings(rows, predictions):
        show(line)
    if rates:
        show(f"\nbf16 matrix products (8192^3) on this GPU: {max(rates) / 1e12:.0f} TFLOP/s measured; MFU above is "
             "against the datasheet peak (bench/cell/measure.py: peak_flops)")
    print(f"gpu_perf ({'cpu smoke' if smoke else 'cuda'}), {time.monotonic() - start:.0f} s, work folder {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
