"""The figure registry: every figure a record holds, declared once.

A figure's entry says where it lives (`section.name`), its unit, its definition (docs/measurement.md's
tables are generated from these entries, and a test keeps them equal), how it aggregates over seeds and
over a model's tasks (bench/report/aggregate.py), the rule a change in it is judged by (bench/judging.py: the
one rule that `compare` and `regress` share) and how it is written for people (`show`).

A figure also says where people see it (`shown`): the report's tables and the explore page are built from
these entries, and every figure is judged by the regression gate under its rule. Adding a figure = an entry
here + the instrument that measures it (bench/cell/instruments.py) + `make docs`; a record refuses a figure
that is not declared here (bench/record.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import fmt

# forgetting: the model's loss on general text before and after training (optional: train setting `forgetting`)
SECTIONS = ("params", "memory", "time", "flops", "forgetting")

# Where a figure can be shown (Shown.place): the report's tables and the explore page.
PLACES = {
    "memory": "the memory table's breakdown (bench/report/tables.py: memory_tables), and its plot",
    "speed": "the memory table's training rate, beside the peak",
    "inference": "the inference table (one per model)",
    "explore": "index.html's explore table and the axes of its Pareto plot",
}


@dataclass(frozen=True)
class Shown:
    """How a figure appears in one place: its column header (and the CSV's, when it is in another unit), the
    factor and decimals the value is written with, and, for the explore page, its axis."""

    place: str  # a key of PLACES
    header: str
    csv_header: str | None = None  # None: the header
    times: float = 1.0  # shown value = recorded value × times (seconds -> ms: 1000)
    decimals: int | None = None  # None: the figure's own writer (Figure.show)
    better: str | None = None  # "higher" or "lower": which way is better (best marks, the Pareto front)
    axis: str | None = None  # explore: its name in the axis pickers; None: a column only
    log: bool = False  # explore: the axis starts on a log scale (counts spanning decades)
    unit: str = ""  # explore: the plotted unit, for tick labels ("count" gets K/M/B suffixes)

    def text(self, figure: "Figure", value) -> str:
        if fmt.missing(value):
            return fmt.DASH
        return figure.show(value) if self.decimals is None else f"{value * self.times:.{self.decimals}f}"


@dataclass(frozen=True)
class Figure:
    section: str
    name: str
    unit: str  # elements, %, bytes, text, s, 1/s, tokens, tokens/s, FLOPs, FLOP/s, ratio, nats, readings
    rule: str  # a key of bench.judging.RULES
    definition: str
    seeds: str = "mean"  # first: fixed by the cell's configuration, one value stands for all seeds
    # across a model's tasks (method summary): largest | mean | same (the value all agree on) | None (not kept)
    tasks: str | None = None
    shown: tuple[Shown, ...] = ()
    recorded: bool = True  # False: only `estimate` computes it (a prediction's part); no record holds it

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def determined(self) -> bool:
        """A function of code, configuration (and torch version): what `estimate` can predict."""
        return self.rule in ("exact", "versioned")

    def show(self, value) -> str:
        """The figure as a table shows it: counts '124.6M', sizes '6.9 KB', FLOPs '3.1e12', ..."""
        if fmt.missing(value):
            return fmt.DASH
        writer = {"elements": fmt.count, "%": fmt.pct, "bytes": fmt.size, "s": fmt.seconds, "FLOPs": fmt.flops,
                  "FLOP/s": fmt.flops}.get(self.unit)
        return writer(value) if writer else value if isinstance(value, str) else f"{value:.4g}"


LATENCY_EXAMPLES = 8  # single-example predictions timed for time.infer_latency_s
MEMORY_SAMPLE_INTERVAL_S = 0.05  # memory.train_*: seconds between readings of the training window's memory
FORGETTING_CHUNK_TOKENS = 128  # forgetting.*: the general text is scored in pieces of this many tokens
MASK_SHARE = 0.15  # BERT's share of masked tokens: an encoder's forgetting and a masked-LM stage's examples
FORGETTING_MASK_SEED = 0  # and the seed that draws them (bench/cell/masked_lm.py)
_SAMPLED = (f"read every {MEMORY_SAMPLE_INTERVAL_S * 1000:g} ms by a thread of its own, and once at each end of "
            "the training window and of each evaluation during training it leaves out (those are not sampled), "
            "never synchronising the device (bench/cell/memory_trace.py)")
_P99 = ("the 99th percentile of those readings: numpy's `percentile(readings, 99)` with linear interpolation, the "
        "value at rank 0.99 × (n − 1) of the sorted readings; means and percentiles are rounded to the byte")
_CUDA_PEAK = "CUDA only: `torch.cuda.max_memory_allocated`"
_FIGURES = [
    # params
    Figure("params", "total", "elements", "exact", "parameter elements in the adapted model, each tensor counted "
           "once (tied weights once, shared storage once). Frozen copies a method keeps are included (peft's "
           "`modules_to_save` keeps the original task head beside the trained copy). A 4-bit weight (QLoRA) counts "
           "the weights it holds, two per stored byte.", "first", "largest"),
    Figure("params", "trainable", "elements", "exact", "elements of the parameters with `requires_grad=True` after "
           "the method is applied (the task head included: every trained method trains it).", "first", "largest",
           shown=(Shown("explore", "Trainable params", axis="trainable params", better="lower", log=True,
                        unit="count"),)),
    Figure("params", "trainable_pct", "%", "exact", "`100 × trainable / total`.", "first", "largest"),
    Figure("params", "method", "elements", "exact", "trainable elements outside the task head: what the method "
           "adds or unfreezes, as papers count a method (LoRA r=8 on RoBERTa-base's query and value: 294,912). The "
           "head is every parameter under a classifier's head modules (peft's trained copy included); `trainable "
           "− method` is what of it trains. Equal to `trainable` for a model predicting with its LM head.",
           "first", "largest",
           shown=(Shown("explore", "Method params", axis="method params", better="lower", log=True, unit="count"),)),
    Figure("params", "method_pct", "%", "exact", "`100 × method /` the pretrained model's parameter elements "
           "without its task head, counted before the method is applied (full fine-tuning: 100).", "first",
           "largest"),
    Figure("params", "stored", "elements", "exact", "parameter elements (floating-point tensors) that must be saved "
           "to restore the fine-tuned model: the method's state (peft's adapter state dict, or the trainable "
           "tensors) including the task head. Integer tensors saved beside them (the indices of a sparse update) "
           "count in `stored_bytes` only.", "first", "largest"),
    Figure("params", "stored_bytes", "bytes", "exact", "size in bytes of those tensors written as one safetensors "
           "file (header included); 0 when there is nothing to store (zero-shot).", "first", "largest"),
    Figure("params", "composed", "elements", "exact", "parameter elements of what the model reads of states other "
           "cells saved, which it needs beside `stored` (AdapterFusion: its task adapters, without the heads their "
           "stages trained; MAD-X: the language adapters, invertible adapters included, of the target languages it "
           "swaps in to score them, its language stages' states, its training language's being in `stored`); null "
           "for a method that reads none.", "first", "largest"),
    Figure("params", "composed_bytes", "bytes", "exact", "size in bytes of those tensors, each state's written as "
           "its own safetensors file (header included), summed; null for a method that reads none.", "first",
           "largest"),
    # memory
    Figure("memory", "weights_bytes", "bytes", "exact", "all parameters in their own dtype, each tensor once (tied "
           "weights once).",
           shown=(Shown("memory", "Weights"),)),
    Figure("memory", "trainable_bytes", "bytes", "exact", "the parameters with `requires_grad=True`, whole tensors: "
           "a method that trains masked entries of a tensor (FishMask, Child-Tuning) still holds a whole gradient "
           "and whole optimizer moments for it, so `trainable_bytes` can exceed `4 × params.trainable`."),
    Figure("memory", "grad_bytes", "bytes", "exact", "the distinct gradients that exist after the instrumented "
           "step's backward pass (a gradient has its parameter's dtype, so fp32 weights give `4 × trainable`).",
           shown=(Shown("memory", "Gradients"),)),
    Figure("memory", "optimizer_bytes", "bytes", "exact", "every tensor in the optimizer's state after its first "
           "step: AdamW's `exp_avg` and `exp_avg_sq` (`2 × 4 × trainable` bytes for fp32 parameters) plus its step "
           "counters (a 4-byte float32 scalar per parameter tensor).",
           shown=(Shown("memory", "Optimizer"),)),
    Figure("memory", "activation_bytes", "bytes", "versioned", "bytes saved for backward during the instrumented "
           "step's forward pass at the probe batch: the distinct storages that "
           "`torch.autograd.graph.saved_tensors_hooks` sees, parameter and buffer storages excluded (they exist "
           "anyway). A saved view counts as its whole storage, once. Deterministic for one torch version and "
           "device. Under bf16 autocast (CUDA) it includes the bf16 copies of weights that matrix products save.",
           shown=(Shown("memory", "Activations"),)),
    Figure("memory", "step_peak_bytes", "bytes", "versioned", "the most bytes a training step holds at once beside "
           "the weights and the optimizer state: the batch, plus the larger of (a) the most bytes alive at once in "
           "the storages the probe step's operators create, sampled after every operator of a forward and backward "
           "pass that nothing else instruments, the garbage collector paused (saved activations, transients that "
           "nothing saves, gradients as backward makes them while it frees activations; kernels' internal "
           "workspaces are not seen) and (b) the optimizer update: "
           "every gradient beside the update's temporaries (`train.optimizer_update`): none when fused (AdamW on "
           "CUDA), `trainable_bytes` for AdamW's foreach, `max(trainable_bytes, 2 × largest trainable tensor)` for "
           "a for-loop. `estimate` runs the step on fake tensors (a deep model's blocks extrapolated phase by "
           "phase, checked) and predicts the update the optimizer makes on CUDA.",
           shown=(Shown("memory", "Step peak"),)),
    Figure("memory", "eval_peak_bytes", "bytes", "versioned", "the most bytes an evaluation batch holds at once "
           "beside the weights: the batch, plus the most bytes alive at once in the storages its forward creates "
           "(eval mode, no gradient; sampled as for `step_peak_bytes`): a classifier's logits in fp32, or rank "
           "classification's log-probabilities over the vocabulary in fp32 of every (prompt, answer option) row; "
           "for generation, what `generate` creates (its key-value cache, its forwards, its scores and sequences). "
           "The cell measures its evaluation sets' longest batch of `eval_batch_size` rows (each split and "
           "template; generation decoding every row to `max_new_tokens`); `estimate` runs it on fake tensors with "
           "every prompt and answer option at `max_length` tokens, the most a cell's are cut to, and bounds "
           "generation's from above (`memory.upper_bound`): one forward of `eval_batch_size` × `num_beams` rows at "
           "prompt + `max_new_tokens` tokens with its cache kept, plus one layer's keys and values and generate's own "
           "tensors (bench/cell/eval_probe.py). Null for a cell with no evaluation set "
           "of its own (a multi-task cell's members, a pre-training stage); a sharded cell measures none "
           "(`estimate --shards` adds the gathered blocks: bench/tools/sharding.py)."),
    Figure("memory", "predicted_peak_bytes", "bytes", "versioned", "what the cell holds at its busiest moment: the "
           "larger of training's `weights_bytes + optimizer_bytes + step_peak_bytes` (read off one step before "
           "training) and evaluation's `weights_bytes + optimizer_bytes + eval_peak_bytes` (evaluations during "
           "training hold the optimizer's state); a cell that trains nothing (zero-shot, in-context learning) "
           "only evaluates: `weights_bytes + eval_peak_bytes`; a pre-training stage (scored on nothing) only "
           "trains. Null when a part of a phase the cell runs is (a multi-task cell's evaluation). `grad_bytes` and "
           "`activation_bytes` are inside `step_peak_bytes` (not added to it).",
           shown=(Shown("memory", "Predicted peak"),)),
    Figure("memory", "mask_bytes", "bytes", "versioned", "`estimate` only, for a method that chooses what trains "
           "from data (fishmask, child-tuning): the bool gradient masks held through training and evaluation, one "
           "byte per eligible entry, in `predicted_peak_bytes`; an upper bound of the cell's (a tensor with no "
           "selected entry keeps none).", recorded=False),
    Figure("memory", "selection_peak_bytes", "bytes", "versioned", "`estimate` only, for a method that chooses "
           "what trains from data (fishmask, child-tuning): the most its selection before training holds at once "
           "(weights, calibration batches, and the larger of a scoring pass, under the training step's autocast, "
           "and the choice: "
           "docs/measurement.md's methods that choose what trains); `predicted_peak_bytes` is at least this.",
           recorded=False),
    Figure("memory", "device_peak_allocated_bytes", "bytes", "measured", f"{_CUDA_PEAK} over the training window: "
           "the most bytes held by live tensors at once (the caching allocator rounds each block up to 512 bytes)."),
    Figure("memory", "device_peak_reserved_bytes", "bytes", "measured", "CUDA only: "
           "`torch.cuda.max_memory_reserved` over the training window: what the caching allocator held from the "
           "driver, cached free blocks included."),
    Figure("memory", "device_other_bytes", "bytes", "measured", "CUDA only: `torch.cuda.memory_allocated` as the "
           "training window opens, minus `weights_bytes`: what else the device holds through training, chiefly the "
           "cuBLAS and cuBLASLt workspaces that the first matrix products (the probe step's, on each stream and "
           "thread) allocated, and the model's buffers (64-82 MiB on an H200). Not in `predicted_peak_bytes` "
           "(`estimate` has no device to ask); `benchmarks/gpu_check.py` prints the ratio with it added."),
    Figure("memory", "eval_peak_allocated_bytes", "bytes", "measured", f"{_CUDA_PEAK} over the final evaluation, "
           "reset at its start."),
    Figure("memory", "nvml_peak_bytes", "bytes", "measured", "CUDA with NVML (the `nvidia-ml-py` distribution's "
           "`pynvml` module, extra `gpu`): this process's device memory as the driver reports it (what "
           "`nvidia-smi` shows: CUDA context and the allocator's reservations included), sampled every 50 ms and at "
           "both ends of the training window; the largest reading. In a container the process may be listed under "
           "a host PID; if the device then lists exactly one compute process, that one is taken."),
    Figure("memory", "cpu_peak_rss_bytes", "bytes", "measured", "the process's peak resident set over the training "
           "window (`VmHWM` after writing `5` to `/proc/self/clear_refs`): interpreter, libraries and, on CPU, "
           "every tensor. Null where `/proc` cannot be reset."),
    Figure("memory", "train_memory_samples", "readings", "measured", "how many times the training window's memory "
           f"was read for the `train_*_bytes` figures below: {_SAMPLED}. A counter that could not be read at an "
           "instant (NVML) has fewer readings; a training window shorter than the interval has the two at its ends."),
    Figure("memory", "train_reserved_mean_bytes", "bytes", "measured", "CUDA only: the mean of the caching "
           "allocator's reserved bytes (`torch.cuda.memory_reserved`, read with `memory_allocated` from one "
           "`torch.cuda.memory_stats`) over the training window's readings (`train_memory_samples`)."),
    Figure("memory", "train_reserved_p99_bytes", "bytes", "measured", f"CUDA only: {_P99}, of the reserved bytes."),
    Figure("memory", "train_reserved_max_bytes", "bytes", "measured", "CUDA only: the largest reading of the reserved "
           "bytes; at most `device_peak_reserved_bytes` (the exact peak, which sees between readings)."),
    Figure("memory", "train_allocated_mean_bytes", "bytes", "measured", "CUDA only: the mean of "
           "`torch.cuda.memory_allocated` (bytes of live tensors, as the host has enqueued the work that allocates "
           "and frees them) over the training window's readings."),
    Figure("memory", "train_allocated_p99_bytes", "bytes", "measured", f"CUDA only: {_P99}, of the allocated "
           "bytes."),
    Figure("memory", "train_allocated_max_bytes", "bytes", "measured", "CUDA only: the largest reading of the "
           "allocated bytes; at most `device_peak_allocated_bytes`, which a reading every 50 ms rarely catches (a "
           "step's peak lasts microseconds to milliseconds)."),
    Figure("memory", "train_nvml_mean_bytes", "bytes", "measured", "CUDA with NVML: the mean of the readings whose "
           "largest is `nvml_peak_bytes` (this process's device memory as the driver reports it)."),
    Figure("memory", "train_nvml_p99_bytes", "bytes", "measured", f"CUDA with NVML: {_P99}, of NVML's readings."),
    Figure("memory", "train_rss_mean_bytes", "bytes", "measured", "the mean of the process's resident set (the "
           "second field of `/proc/self/statm` × the page size: what `VmHWM` peaks over) over the training "
           "window's readings; on CUDA too (host memory). Null without `/proc`."),
    Figure("memory", "train_rss_p99_bytes", "bytes", "measured", f"{_P99}, of the resident set."),
    Figure("memory", "train_rss_max_bytes", "bytes", "measured", "the largest reading of the resident set; at most "
           "`cpu_peak_rss_bytes` up to the kernel's approximate per-CPU counting (a few hundred KB: see below)."),
    Figure("memory", "peak_bytes", "bytes", "measured", "the report's \"measured peak\": "
           "`device_peak_allocated_bytes` on CUDA, else `cpu_peak_rss_bytes`.", tasks="largest",
           shown=(Shown("explore", "Peak memory", axis="peak memory", better="lower", unit="bytes"),)),
    Figure("memory", "peak_source", "text", "exact", "which of the two `peak_bytes` is.", "first", "same"),
    # time
    Figure("time", "load_s", "s", "timing", "reading data, tokenising, building the model and applying the method."),
    Figure("time", "to_training_s", "s", "timing", "seconds from the start of setup to the start of training: "
           "`load_s` plus what the harness does before the first training step (the static figures, counting "
           "inference FLOPs, the instrumented probe step): what a user waits before the first step trains. Null "
           "for a method that does not train.", tasks="mean",
           shown=(Shown("explore", "To training (s)", axis="time to training (s)", better="lower", unit="s"),)),
    Figure("time", "train_s", "s", "timing", "the sum of training-step times; a step runs from collating its batch "
           "to the end of the optimizer step (on CUDA timed by events on the device's timeline, nothing "
           "synchronised inside the loop). Evaluations during training, the instrumented step and the "
           "optimizer-state reading are excluded.", tasks="mean",
           shown=(Shown("explore", "Train time (s)", axis="train time (s)", better="lower", unit="s"),)),
    Figure("time", "eval_s", "s", "timing", "the final evaluation.", tasks="mean"),
    Figure("time", "step_s_median", "s", "timing", "median step time."),
    Figure("time", "train_samples_per_s", "1/s", "timing", "training examples processed / `train_s`.", tasks="mean"),
    Figure("time", "train_tokens_per_s", "tokens/s", "timing", "non-padding tokens processed / `train_s`: input "
           "tokens, plus decoder target tokens for encoder-decoders (decided by the model's kind, not by tensor "
           "shapes)."),
    Figure("time", "train_flops_per_s", "FLOP/s", "timing", "`flops.train_total` / `train_s`: the counted training "
           "FLOPs per second of step time.",
           shown=(Shown("speed", "Train TFLOP/s", "Train FLOP/s", times=1e-12, decimals=3),)),
    Figure("time", "mfu", "ratio", "timing", "model FLOPs utilisation: `train_flops_per_s` / the device's datasheet "
           "peak (dense, no sparsity) for the dtype the matrix products ran in (bf16 under autocast, else fp32 "
           "without TF32), from the table `PEAK_FLOPS` in `bench/cell/measure.py`; null on a CPU or a GPU the table "
           "lacks. A datasheet peak rather than a measured matmul rate, so records of one GPU model compare across "
           "machines.",
           shown=(Shown("speed", "MFU (%)", "MFU (ratio)", times=100, decimals=1),)),
    Figure("time", "compile_s", "s", "timing", "`train.compile` only: seconds of `torch.compile` (dynamic shapes) "
           "and the one warm-up forward and backward on the first training batch that triggers it, before the "
           "timed steps (so not in `train_s`); null without compile."),
    Figure("time", "infer_latency_s", "s", "timing", "seconds to predict one evaluation example alone (batch 1) "
           "as evaluation predicts it (a forward pass; every answer option of rank classification; the whole "
           "decoding loop of generation), CUDA synchronised, tokenisation excluded: the median over the main "
           f"split's first {LATENCY_EXAMPLES} examples, after one warm-up prediction, with the trained model.",
           tasks="mean",
           shown=(Shown("inference", "Latency, batch 1 (ms)", "Latency, batch 1 (s)", times=1e3, decimals=2,
                        better="lower"),
                  Shown("explore", "Latency (ms)", times=1e3, decimals=2, axis="inference latency (ms)",
                        better="lower", unit="ms"))),
    Figure("time", "infer_examples_per_s", "1/s", "timing", "examples predicted per second in batches of "
           "`eval_batch_size`, over the main split's first 2 × `eval_batch_size` examples (all, when fewer), CUDA "
           "synchronised, tokenisation excluded. Every evaluation predicts those examples first, as a group of "
           "their own, then the rest, each group in batches taken longest first; the trained model's are timed "
           "inside the final evaluation.", tasks="mean",
           shown=(Shown("inference", "Examples/s, eval batch", decimals=1, better="higher"),)),
    Figure("time", "infer_latency_merged_s", "s", "timing", "`infer_latency_s` with the method's update merged "
           "into the weights (mergeable methods; null for the others, and when the merged copy does not fit in "
           "memory).", tasks="mean",
           shown=(Shown("inference", "Merged latency (ms)", "Merged latency (s)", times=1e3, decimals=2,
                        better="lower"),)),
    Figure("time", "infer_examples_per_s_merged", "1/s", "timing", "`infer_examples_per_s` of that merged model: "
           "the same examples predicted again, by the merged copy, after its latency's predictions.",
           tasks="mean",
           shown=(Shown("inference", "Merged examples/s", decimals=1, better="higher"),)),
    # flops
    Figure("flops", "train_total", "FLOPs", "versioned", "the instrumented step's forward + backward FLOPs per "
           "padded position, × the padded positions trained (`train.positions`). Linear in length: attention's L² "
           "term, measured at the longest width, makes this an upper bound when batches are shorter.", tasks="mean"),
    Figure("flops", "inference_per_example", "FLOPs", "versioned", "FLOPs counted while predicting the first 8 "
           "evaluation examples as evaluation predicts them, in batches of 8 (a classifier's forward pass; every "
           "answer option of rank classification, longest first, an encoder-decoder's prompt through its encoder "
           "once and its states repeated over the options; the whole decoding loop of generation), / 8. "
           "In-context demonstrations and soft prompts are part of the count, which is what makes in-context "
           "learning expensive at inference.", tasks="mean"),
    Figure("flops", "cost_model_train_total", "FLOPs", "exact", "T-Few's cost model (Liu et al. 2022): training "
           "factor × N × tokens trained (`train.tokens`, non-padding).", tasks="mean"),
    Figure("flops", "cost_model_inference_per_example", "FLOPs", "exact", "inference factor × N × the tokens of "
           "those examples / 8: the prompt; for rank classification on a decoder prompt + option for every "
           "option, on an encoder-decoder the prompt once plus every option (T-Few's accounting: the encoder reads "
           "the prompt once); for generation, plus the first reference.", tasks="mean"),
    # forgetting
    Figure("forgetting", "lm_loss_before", "nats", "loss", "with `train.forgetting` on a model predicting with its "
           "LM head (a decoder, or an encoder-decoder), or on an encoder whose checkpoint has a masked-LM head "
           "(read with that head, frozen, on the cell's last hidden states; null for a checkpoint without one, as "
           "MiniLM-L6's, a tiny model, and a decoder or encoder-decoder under a classifier head): the mean "
           "cross-entropy, in nats per predicted token, of the adapted model before its first training step "
           "(`before_training`: the method applied, untrained, so a soft prompt's random init is part of it) on a "
           "fixed general text (`text_sha256`). The "
           "text is tokenised whole by the model's tokenizer without special tokens and cut into consecutive "
           f"pieces of {FORGETTING_CHUNK_TOKENS} tokens (a last, shorter piece kept from 2 tokens; an encoder's as "
           "`objective` says); `objective` "
           "says what is predicted of each piece. The sum of −log p over every predicted token of every piece, "
           "over their number (`tokens`). The model in eval mode (no dropout), under `torch.no_grad`, on the "
           "cell's device and autocast, `eval_batch_size` pieces at once, log-softmax in fp32; outside the "
           "training window. Null for a method that does not train.", tasks="mean"),
    Figure("forgetting", "lm_loss_after", "nats", "loss", "`lm_loss_before` of the trained model (`trained`: after "
           "the last step, `keep_best` applied): the same pieces, computed the same way. Null when training "
           "diverged.", tasks="mean"),
    Figure("forgetting", "delta", "nats", "loss", "`lm_loss_after − lm_loss_before`: how much fine-tuning raised "
           "the model's loss on general text (negative: it fell).", tasks="mean",
           shown=(Shown("explore", "Forgetting (nats)", axis="forgetting (Δ loss, nats)", better="lower",
                        unit="nats"),)),
    Figure("forgetting", "objective", "text", "exact", "`causal` for a decoder: each piece is the input and every "
           "token after its first is predicted from those before it; `prefix` for an encoder-decoder (the T5 "
           "paper's prefix LM, not its span corruption): the encoder reads the piece's first ⌈n/2⌉ tokens, the "
           "decoder predicts the other ⌊n/2⌋ from its start token on, teacher-forced; `masked` for an encoder: "
           f"pieces of {FORGETTING_CHUNK_TOKENS} − 2 tokens wrapped in its [CLS] and [SEP] (<s>, </s>), of "
           f"each piece's n tokens ⌊{MASK_SHARE} n + 0.5⌋ (at least 1) replaced by the mask token "
           f"and predicted, drawn by Python's random.Random({FORGETTING_MASK_SEED}).sample piece by piece "
           "(no 80/10/10 replacement): the same positions in every cell.", "first", "same"),
    Figure("forgetting", "tokens", "tokens", "exact", "the predicted tokens that `lm_loss_before` and "
           "`lm_loss_after` average over.", "first"),
    Figure("forgetting", "text_sha256", "text", "exact", "the first 16 hex digits of the SHA-256 of the text's "
           "bytes: the packaged `bench/texts/general.txt` (written for this harness, Apache-2.0 like it), or the "
           "file `train.forgetting_text` names.", "first", "same"),
]
FIGURES: dict[str, Figure] = {f.key: f for f in _FIGURES}
for _f in _FIGURES:
    for _where in _f.shown:
        assert _where.place in PLACES, f"{_f.key}: unknown place {_where.place!r}"
SCORE = Figure("scores", "<metric>", "points", "score", "the metric on the 0-100 scale (bench/tasks/metrics.py).")
# A cross-lingual task's further scores (bench/tasks/crosslingual.py; `figure()` finds them as scores, under SCORE).
CROSSLINGUAL_SCORES = (
    Figure("scores", "<metric>_<language>", "points", "score", "the metric on one target language's evaluation "
           "split, scored by the model trained on the task's `train_language` (whose own score is `<metric>`)."),
    Figure("scores", "<metric>_transfer", "points", "score", "the mean of `<metric>_<language>` over the task's "
           "target languages (every language but the training one: zero-shot transfer, XTREME's average less its "
           "source language); null when any of them is null."),
)
# A multi-task cell's scores (bench/cell/multitask.py): each task's metrics under its name, and their average.
TASK_SCORE = Figure("scores", "<task>:<metric>", "points", "score", "a multi-task cell's metric on one task of its "
                    "mixture: that task's evaluation split under its templates (median over templates), as a cell "
                    "of that task alone scores it.")
TASK_AVERAGE = Figure("scores", "task_average", "points", "score", "a multi-task cell's main score: the unweighted "
                      "mean over the tasks of its mixture of each task's main metric (`scores.<task>:<main "
                      "metric>`); null when any of them is null.")
SCORES = (SCORE, *CROSSLINGUAL_SCORES, TASK_SCORE, TASK_AVERAGE)


def shown_in(place: str) -> list[tuple[Figure, Shown]]:
    """The figures shown in `place`, in the registry's order, each with how it is shown there."""
    if place not in PLACES:
        raise KeyError(f"unknown place {place!r}; places: {', '.join(PLACES)}")
    return [(f, where) for f in _FIGURES for where in f.shown if where.place == place]


def names(section: str) -> tuple[str, ...]:
    """The figures of a record section, in the registry's order (those a record holds)."""
    return tuple(f.name for f in _FIGURES if f.section == section and f.recorded)


def figure(key: str) -> Figure | None:
    """The registered figure behind a flattened name ('memory.peak_bytes', 'scores.accuracy')."""
    if not key.startswith("scores."):
        return FIGURES.get(key)
    name = key.removeprefix("scores.")
    return TASK_AVERAGE if name == TASK_AVERAGE.name else TASK_SCORE if ":" in name else SCORE


def markdown_table(section: str) -> str:
    """docs/measurement.md's table of a section (tests/test_figures.py keeps the docs equal to it)."""
    rows = [f"| `{f.name}` | {f.unit} | {f.rule} | {f.definition} |" for f in _FIGURES if f.section == section]
    return "\n".join(["| figure | unit | rule | definition |", "|---|---|---|---|", *rows])
