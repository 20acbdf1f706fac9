"""`peft-bench estimate`: a training step's parameters, memory and FLOPs, without weights."""

from __future__ import annotations

import json

from bench.config import TrainConfig
from bench.errors import BadInput, unknown


def add(sub) -> None:
    est = sub.add_parser("estimate", help="parameters, memory and FLOPs of a training step, without weights")
    est.add_argument("--model", required=True, help="registry name, local folder with config.json, or hub id")
    est.add_argument("--method", required=True, help="registry method name, or a composition of them: "
                     "'compose(prefix-tuning+adapter-parallel)', its parts at their defaults")
    est.add_argument("--batch-size", type=int, default=8, help="rows per step (default: 8)")
    est.add_argument("--seq-len", type=int, default=512, help="tokens per row (default: 512)")
    est.add_argument("--eval-batch-size", type=int, default=TrainConfig.eval_batch_size, help="rows per evaluation "
                     f"batch, the training setting eval_batch_size (default: {TrainConfig.eval_batch_size})")
    est.add_argument("--optimizer", default="adamw", help="an optimizer of bench/optimizers.py: "
                     "adamw, adafactor, adafactor-tfew or sgd (default: adamw)")
    est.add_argument("--weights-dtype", "--dtype", dest="weights_dtype", default="auto",
                     help="dtype the weights are built in, the training setting weights_dtype: auto (the checkpoint's "
                          "dtype, from the shipped config; else fp32), bf16, fp16 or fp32 (default: auto)")
    est.add_argument("--precision", default="auto", help="the training setting precision, of a cell on a GPU: auto "
                     "or bf16 (bf16 autocast, CUDA's lists of what runs in bf16), fp32 (default: auto)")
    est.add_argument("--attention", default="auto", help="attention implementation, the training setting attention: "
                     "auto (transformers' choice: sdpa), sdpa or eager (default: auto)")
    est.add_argument("--gradient-checkpointing", action="store_true", help="the training setting "
                     "gradient_checkpointing: layers' activations recomputed in backward, not kept")
    est.add_argument("--kernels", default="torch", help="the training setting kernels: torch, or liger (Liger's "
                     "fused kernels' memory, bench/tools/liger_memory.py; LLaMA-family models; default: torch)")
    est.add_argument("--shards", type=int, default=1, help="the memory of one of this many GPUs the cell is sharded "
                     "over with FSDP2, --batch-size per GPU (docs/scale.md; default: 1, unsharded)")
    est.add_argument("--task", help="a task of the registry (peft-bench list tasks; xnli@de: XNLI trained in German), "
                     "whose head the model has, as a cell on it does (default: a 2-way classifier on an encoder, "
                     "the LM head elsewhere)")
    est.add_argument("--objective", default="lm", help="the training setting objective: lm, or tfew (T-Few's loss "
                     "on every answer option of --batch-size examples of --task, the other tfew settings at their "
                     "defaults; bench/tools/priced_task.py options_batch; default: lm)")
    est.add_argument("--set", action="append", metavar="KEY=VALUE", help="a method setting, as a suite's "
                     "overrides give it (repeatable): --set r=16 --set target_modules=q,v")
    est.add_argument("--json", action="store_true", help="machine-readable output")
    est.set_defaults(func=command)


def method_sets(pairs: list[str] | None) -> dict:
    """`--set KEY=VALUE` flags as a method's settings, each value read as a YAML scalar (16, 0.1, true, null,
    all-linear) or, with commas, a list of them (q,v): the method then checks them as it checks a suite's
    overrides."""
    import yaml

    settings = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"expected KEY=VALUE, got '{pair}'", "--set")
        try:
            items = [yaml.safe_load(v) for v in text.split(",")] if "," in text else None
            settings[key.strip()] = items if items is not None else yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BadInput(f"cannot read the value of '{pair}': {e.problem or e}", "--set") from None
    return settings


def registry_task(name: str | None):
    """The task `--task` names (tasks.TaskSpec), None without one; an unknown name: BadInput listing the tasks."""
    if name is None:
        return None
    from bench.tasks.registry import registry

    tasks = registry()
    if name not in tasks:
        raise unknown("task", name, tasks, "--task")
    return tasks[name]


def training_objective(name: str, task):
    """The options step `--objective` asks for (priced_task.objective_of, the tfew settings at TrainConfig's
    defaults), None for lm; BadInput for another name, or tfew without a --task to take answer options from."""
    from bench.tools.priced_task import objective_of

    if name not in ("lm", "tfew"):
        raise unknown("objective", name, ("lm", "tfew"), "--objective")
    if name == "tfew" and task is None:
        raise BadInput("tfew scores a task's answer options: give the task (--task)", "--objective", ("lm", "tfew"))
    return objective_of(TrainConfig(objective=name), task)


def command(args) -> int:
    from bench.methods.base import keep_out_optional_packages

    keep_out_optional_packages([args.method])  # before anything imports peft, which imports bitsandbytes if it can
    from bench import methods
    from bench.models import resolve_model
    from bench.tools.estimate import check_inputs, estimate, prepare_to_count, render

    settings = method_sets(args.set)
    if args.shards < 1:
        raise BadInput(f"--shards must be at least 1, got {args.shards}", "--shards")
    check_inputs(args.batch_size, args.seq_len, args.optimizer, args.weights_dtype, args.attention, args.kernels,
                 args.precision)
    methods.for_cell(args.method, "--method")
    task = registry_task(args.task)
    objective = training_objective(args.objective, task)
    prepare_to_count([resolve_model(args.model, "--model").arch])  # the imports, once the input is known good
    result = estimate(args.model, args.method, args.batch_size, args.seq_len, args.optimizer, args.weights_dtype,
                      settings=settings, attention=args.attention, gradient_checkpointing=args.gradient_checkpointing,
                      shards=args.shards, kernels=args.kernels, task=task, precision=args.precision,
                      eval_batch_size=args.eval_batch_size, objective=objective)
    print(json.dumps(result, indent=1) if args.json else render(result))
    return 0
