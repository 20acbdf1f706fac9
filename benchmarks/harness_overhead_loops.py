"""Harness overhead (benchmarks/harness_overhead.py): the cell it runs, and what runs in its worker processes: the
plain PyTorch + peft loop (b), HF Trainer + peft (c), and the one-process comparisons of the harness's loop with the
plain one. A worker is `python benchmarks/harness_overhead.py --worker KIND`, which calls `worker` here."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import since_launch, write_json

SMOKE = False  # a helper module of harness_overhead.py (tests/test_benchmarks.py)
METHODS = ("full", "lora", "prompt-tuning")

# The cell per model: task, budget and learning rates. Tiny: the smoke suite's settings and learning rates;
# MiniLM: the real-cpu suite's (prompt tuning, not in real-cpu: the method's recommended 0.3).
MODELS = {
    "tiny-encoder": {"task": "synth-polarity", "steps": 300, "batch_size": 32, "max_length": 64, "block": 25,
                     "eval_batch_size": 128, "max_train_samples": None, "max_eval_samples": None,
                     "needs_data": False, "lr": {"full": 1e-3, "lora": 5e-3, "prompt-tuning": 1e-1}},
    "minilm-l6": {"task": "sst2", "steps": 30, "batch_size": 16, "max_length": 64, "eval_batch_size": 256, "block": 4,
                  "max_train_samples": 1000, "max_eval_samples": 300, "needs_data": True,
                  "lr": {"full": 1e-4, "lora": 1e-3, "prompt-tuning": 3e-1}},
}
WARMUP_RATIO = 0.06
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0

# The peft settings written out by hand for (b) and (c), as the harness resolves them on BERT/RoBERTa
# (bench/methods/lora.py, prompts.py; bench/methods/peft_common.py puts the head in modules_to_save).
# check_peft_settings() compares them with the registry before anything runs.
PEFT_SETTINGS = {
    "lora": ("LoraConfig", {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["query", "value"]}),
    "prompt-tuning": ("PromptTuningConfig", {"num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM",
                                             "num_transformer_submodules": 1}),
}



def build(spec: dict):
    """Seed, model (bench.models.load_bundle), data (bench's tokenisation, no disk cache), the method by hand.
    Returns (bundle, model, features, evalset, tok_s)."""
    import random

    import numpy as np
    import peft
    import torch

    from bench.models import load_bundle, resolve_model
    from bench.tasks.registry import builtin_tasks
    from bench.tasks.data import load_rows, subsample
    from bench.tasks.features import eval_features, train_features

    seed = spec["seed"]
    random.seed(seed)  # as bench.cell.recipe.seed_everything
    torch.manual_seed(seed)
    np.random.seed(seed)
    task = builtin_tasks()[spec["task"]]
    bundle = load_bundle(resolve_model(spec["model"]), task.type, task.num_labels, seed, "cpu")
    t_tok = time.perf_counter()
    rows = load_rows(task, "train", spec["data_dir"])
    for i, row in enumerate(rows):
        row.setdefault("idx", i)
    rows = subsample(rows, spec["max_train_samples"], seed)
    features = train_features(task, bundle, rows, spec["max_length"], seed)
    eval_rows = load_rows(task, "eval", spec["data_dir"])[: spec["max_eval_samples"]]
    evalset = eval_features(task, bundle, eval_rows, spec["max_length"])
    tok_s = time.perf_counter() - t_tok
    model = bundle.model
    if spec["method"] == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        config_class, settings = PEFT_SETTINGS[spec["method"]]
        config = getattr(peft, config_class)(task_type="SEQ_CLS", modules_to_save=["classifier"], **settings)
        model = peft.get_peft_model(model, config)
    return bundle, model, features, evalset, tok_s


def optimizer_and_schedule(model, lr: float, steps: int):
    """AdamW, no decay on biases and norm weights; linear warmup then linear decay to zero (the harness's)."""
    import torch

    exempt = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(False)}
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not (n.endswith("bias") or id(p) in exempt)]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (n.endswith("bias") or id(p) in exempt)]
    groups = [g for g in ({"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    warmup = int(WARMUP_RATIO * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    return optimizer, schedule


def plain_train(model, features: list[dict], pad: int, steps: int, bs: int, lr: float, seed: int):
    """The minimal loop: the harness's seeded batch order (bench.cell.batching.batches), each step timed from
    batch collation to the end of the optimizer step. Returns (step seconds, losses)."""
    import torch

    from bench.cell.batching import collate

    optimizer, schedule = optimizer_and_schedule(model, lr, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    gen, order = torch.Generator().manual_seed(seed), []
    step_s, losses = [], []
    model.train()
    for _ in range(steps):
        start = time.perf_counter()
        while len(order) < bs:
            order += torch.randperm(len(features), generator=gen).tolist()
        chunk, order = order[:bs], order[bs:]
        batch = collate([features[i] for i in chunk], pad)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return step_s, losses


def trainer_train(model, features: list[dict], pad: int, steps: int, bs: int, lr: float, seed: int):
    """HF Trainer with the same optimizer and schedule objects; a step is the time between consecutive
    on_step_end callbacks (batch fetch and collation, forward, backward, clipping, optimizer and scheduler
    step, Trainer's bookkeeping). Returns (step seconds, [mean training loss])."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from bench.cell.batching import collate

    step_s = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            step_s.append(now - self.last)
            self.last = now

    optimizer, schedule = optimizer_and_schedule(model, lr, steps)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=bs, learning_rate=lr,
            weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, eval_strategy="no", save_strategy="no",
            logging_strategy="no", report_to="none", seed=seed, use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=lambda b: collate(b, pad),
                          optimizers=(optimizer, schedule), callbacks=[StepTimes()])
        result = trainer.train()
    return step_s, [result.training_loss]  # Trainer keeps only the mean


def accuracy_of(model, evalset, pad: int, batch_size: int) -> float:
    import torch

    from bench.cell.batching import collate

    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(evalset.features), batch_size):
            preds += model(**collate(evalset.features[i: i + batch_size], pad)).logits.argmax(-1).tolist()
    return 100.0 * sum(p == g for p, g in zip(preds, evalset.gold)) / len(preds)


def worker(kind: str, spec: dict, out: Path) -> None:
    """(b) or (c): one cell in this process, its figures written to `out` as JSON."""
    marks = {}
    import torch

    torch.set_num_threads(spec["threads"])
    import peft  # noqa: F401
    import transformers

    if kind == "trainer":
        import transformers.trainer  # noqa: F401  (its imports count as Trainer's)
    import bench.models  # noqa: F401
    import bench.tasks.features  # noqa: F401

    transformers.logging.set_verbosity_error()
    marks["imported"] = since_launch()
    if kind == "inprocess":
        return inprocess(spec, out)
    if kind == "null":
        return null_loop(spec, out)

    t0 = time.perf_counter()
    bundle, model, features, evalset, tok_s = build(spec)
    pad = bundle.tokenizer.pad_token_id
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    load_s = time.perf_counter() - t0
    marks["loaded"] = since_launch()
    began = time.perf_counter()
    run = plain_train if kind == "plain" else trainer_train
    step_s, losses = run(model, features, pad, spec["steps"], spec["batch_size"], spec["lr"], spec["seed"])
    train_window_s = time.perf_counter() - began
    marks["trained"] = since_launch()
    t_eval = time.perf_counter()
    accuracy = accuracy_of(model, evalset, pad, spec["eval_batch_size"])
    eval_s = time.perf_counter() - t_eval
    marks["evaluated"] = since_launch()
    tail = losses[-10:]
    result = {"variant": kind, "step_s_median": statistics.median(step_s), "train_s": sum(step_s),
              "train_window_s": train_window_s, "steps": len(step_s), "load_s": load_s, "tok_s": tok_s,
              "eval_s": eval_s, "accuracy": accuracy, "n_eval": len(evalset.features), "trainable": trainable,
              "first_loss": losses[0], "final_loss": sum(tail) / len(tail), "threads": torch.get_num_threads(),
              "marks": marks}
    write_json(out, result)


def harness_loop(bundle, spec: dict, lr: float, steps: int):
    """What bench.cell.train.train is given in the one-process comparisons: the cell's training settings for
    `steps` steps at `lr`, and the harness's own objective for a classification head."""
    from bench.cell.objectives import objective_for
    from bench.config import TrainConfig

    config = TrainConfig(lr=lr, batch_size=spec["batch_size"], max_steps=steps, max_length=spec["max_length"],
                         warmup_ratio=WARMUP_RATIO, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM)
    return config, objective_for("head", bundle, "classification")


def abba(rounds: int, run_a, run_b) -> tuple[list, list]:
    """One uncounted run of each (warm-up), then `rounds` rounds in ABBA order: what each run returned."""
    run_a(), run_b()
    a, b = [], []
    for r in range(rounds):
        for variant in ("ab" if r % 2 == 0 else "ba"):
            (a if variant == "a" else b).append(run_a() if variant == "a" else run_b())
    return a, b


def inprocess(spec: dict, out: Path) -> None:
    """The harness's training loop (bench.cell.train.train) and the plain loop in one process, on one model
    reset to the same weights before each block of `block` steps (ABBA order, one uncounted block of each
    first), so that process start, machine load and memory layout weigh on both alike. (The weights are
    reset, not the model deep-copied: a deep copy of a mean-pooled model keeps feeding the original's
    pooling mask, bench.layers.pooling.use_mean_pooling.)"""
    from bench.cell import train as harness
    from bench.methods.base import Adapted

    bundle, model, features, _, _ = build(spec)
    pad = bundle.tokenizer.pad_token_id
    block, rounds = spec["block"], spec["rounds"]
    config, objective = harness_loop(bundle, spec, spec["lr"], block)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def harness_block() -> list[float]:
        model.load_state_dict(initial)
        return harness.train(Adapted(model), features, objective, config, spec["seed"], "cpu", quiet=True).step_s

    def plain_block() -> list[float]:
        model.load_state_dict(initial)
        return plain_train(model, features, pad, block, spec["batch_size"], spec["lr"], spec["seed"])[0]

    a, b = abba(rounds, harness_block, plain_block)
    write_json(out, {"variant": "inprocess", "block": block, "rounds": rounds,
                     "harness_step_s": [s for blk in a for s in blk], "plain_step_s": [s for blk in b for s in blk],
                     "round_ratios": [statistics.median(x) / statistics.median(y) for x, y in zip(a, b)]})


def null_loop(spec: dict, out: Path) -> None:
    """The loops' own cost per step, where the model costs next to nothing: an embedding bag and a linear
    layer on the tiny cell's real batches (bench's collate included), trained by bench.cell.train.train and by
    the plain loop in ABBA blocks of `null_steps` steps. Each variant's median step (the timed window) and its
    whole loop's wall time per step (what the window leaves out: loss read-out, token counts, progress) are
    microseconds that a real step's milliseconds then carry."""
    from types import SimpleNamespace

    import torch

    from bench.cell import train as harness
    from bench.methods.base import Adapted

    bundle, _, features, _, _ = build({**spec, "method": "full"})
    pad, steps = bundle.tokenizer.pad_token_id, spec["null_steps"]

    class Null(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = torch.nn.Embedding(len(bundle.tokenizer), 8), torch.nn.Linear(8, 2)

        def forward(self, input_ids, attention_mask=None, labels=None):
            logits = self.head(self.emb(input_ids).mean(1))
            return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits, labels), logits=logits)

    config, objective = harness_loop(bundle, spec, 1e-3, steps)

    def timed(train_null) -> dict:
        model = Null()
        start = time.perf_counter()
        step_s = train_null(model)
        return {"median_s": statistics.median(step_s), "loop_per_step_s": (time.perf_counter() - start) / steps}

    found = dict(zip(("harness", "plain"), abba(
        spec["rounds"],
        lambda: timed(lambda m: harness.train(Adapted(m), features, objective, config, spec["seed"], "cpu",
                                              quiet=True).step_s),
        lambda: timed(lambda m: plain_train(m, features, pad, steps, spec["batch_size"], 1e-3, spec["seed"])[0]))))
    write_json(out, {"variant": "null", "steps": steps, "rounds": spec["rounds"], **found})
