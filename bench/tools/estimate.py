"""`peft-bench estimate`: parameters, memory and FLOPs of one training step, without weights or a device.

How: the model is built on the `meta` device from its config (shipped configs need no network), the
method is applied as in a cell (same registry, same config resolution), and bench.cell.probe's
instrumented step runs on fake tensors at the model's full depth (bench/tools/fake_pass.py: shapes and
dtypes only, so the bytes saved and alive at once and the FLOPs are a real step's, at no memory cost).
Why not a real probe on a shrunk copy: scaling it back up needs a rule per
architecture (width, depth, attention's L², grouped-query heads, vocabulary), while the fake pass is
exact at full size, deterministic, and uses the very code that measures a cell; on the tiny models it
reproduces a real CPU step's activation bytes to the byte (tests/test_estimate.py).

The batch is B rows of exactly L tokens with no padding; encoder-decoders decode L target tokens; encoders get a
2-way classification head, the others their LM head; a cell is priced with its task's instead, as `--task` asks
(bench/tools/priced_task.py: the task's head, a mixture's heads and router rows, each row of the batch one task's),
and with its pooling; a T-Few-objective cell's step (`--objective tfew`) on an options batch, every answer option of
each example a row, through tfew's terms (priced_task.options_batch).
`--attention eager` builds the model with its own
matmul-softmax attention instead, which saves the L×L probabilities as a real eager step does.
`--kernels liger` (the training setting `kernels`) binds memory twins of Liger's fused kernels where a cell binds
the kernels themselves, so the step allocates and saves what Liger's do (bench/tools/liger_memory.py): no
[tokens, vocab] logits for a causal LM, and RMSNorm's and SwiGLU's own saved tensors.
QLoRA's 4-bit layers, which bitsandbytes makes only on a device, are built as twins of what it stores and runs on a
GPU (bench/layers/nf4_twin.py): the estimate is of its CUDA path, and says so.
`--weights-dtype` is the dtype the model is built in, the training setting `weights_dtype` (`auto`: the
shipped config's `dtype`, as a checkpoint loads; else fp32); gradients and optimizer moments follow their
parameter's dtype (peft keeps adapter weights in fp32 under a bf16 base model, as it does in training).
A method that chooses what trains from data (fishmask, child-tuning) builds its meta-device twin (bench/methods/
fisher.py), which trains every tensor that may get a selected entry: its memory is then an upper bound
(`memory.upper_bound` says why), and its scoring passes before training are priced too, under the training step's
autocast as the cell runs them (bench/tools/selection_cost.py: FLOPs `flops.selection`, memory
`memory.selection_peak_bytes`; the predicted peak is the larger phase's).
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from bench import optimizers
from bench.cell.measure import head_elements, method_params, predicted_peak, weight_bytes
from bench.cell.probe import StepMeasure, forward_flops_per_example, step_peak_bytes, training_flops
from bench.cell.train import compute_dtype
from bench.config import ATTENTIONS, KERNELS, PRECISIONS, WEIGHTS_DTYPES, TrainConfig
from bench.errors import BadInput, Unsupported, unknown
from bench.figures import FIGURES
from bench.tensors import count_params, unique_tensors
from bench.tools import fake_pass
from bench.tools.cuda_step import departures
from bench.tools.priced_task import OptionsObjective, collate_mask_bytes, fake_batch, options_batch, task_bundle
from bench.tools.selection_cost import selection_cost, with_selection
from bench.tools.sharding import largest_block, sharded_memory


def _adapted_model(spec, method_name: str, batch_size: int, seq_len: int, dtype: str, settings: dict | None,
                   attention: str, gradient_checkpointing: bool, kernels: str = "torch", task=None,
                   pooling: str | None = None):
    from bench import methods
    from bench.config import TrainConfig
    from bench.methods.base import ApplyContext

    method = methods.for_cell(method_name, "--method")
    try:
        bundle = task_bundle(spec, task, dtype, attention, pooling)
    except Unsupported as e:
        raise BadInput(f"{spec.name} cannot take task '{task.name}': {e}", "--model") from None
    if kernels == "liger":  # as the cell binds Liger's kernels: before the method adapts the model
        from bench.plan.kernels import head_alone
        from bench.tools.liger_memory import bind_twins

        if bundle.head == "lm" and not method.trains_below_head:  # as run refuses it (bench/plan/kernels.py)
            raise BadInput(f"{spec.name}: {head_alone(method_name)}", "--kernels", KERNELS)

        try:
            bind_twins(bundle.model)
        except ValueError as e:
            raise BadInput(f"{spec.name}: {e}", "--kernels", KERNELS) from None
    body = count_params(bundle.model)["total"] - head_elements(bundle.model, bundle.head_modules)[0]
    config = method.resolve(settings or {}, spec.arch, lambda key: f"--set {key}" if key else "--set", flags=True)
    train = TrainConfig(batch_size=batch_size, max_length=seq_len, max_steps=1,
                        gradient_checkpointing=gradient_checkpointing)
    try:
        with torch.device("meta"):  # what a method creates is meta too (peft builds adapters on the CPU first)
            return bundle, body, method, config, method.apply(bundle.model, config, ApplyContext(
                bundle, train, total_steps=1, device="meta", task=task))
    except Unsupported as e:
        raise BadInput(f"method '{method_name}' does not apply to {spec.name}: {e}", "--method") from None
    except Exception as e:  # the method's own reason, said plainly
        raise BadInput(f"method '{method_name}' cannot be built on {spec.name} without weights (on the meta "
                       f"device): {type(e).__name__}: {e}", "--method") from None


def prepare_to_count(archs) -> None:
    """For a process that counts steps and then ends (`estimate`, `run --dry-run`): quiet the libraries, import
    what building these architectures' models and methods needs (their modeling code, peft), then freeze what is
    alive: the collector's own collections, which the passes' allocations set off, no longer traverse every object
    the imports made, and a forked worker shares the imports rather than repeating them (a collection writes to
    the pages it traverses)."""
    import gc
    import importlib

    from bench.archs import ARCHS
    from bench.models import quiet_libraries

    quiet_libraries()  # building methods warns of what is not the estimate's news
    for name in ["peft", *sorted({ARCHS[a].modeling for a in archs if a in ARCHS})]:
        try:
            importlib.import_module(name)
        except ImportError:  # the build says what is missing, where it needs it
            pass
    gc.freeze()


def check_inputs(batch_size: int, seq_len: int, optimizer: str = "adamw", dtype: str = "fp32",
                 attention: str = "auto", kernels: str = "torch", precision: str = "auto") -> None:
    """BadInput, naming the flag, for a setting no estimate can take."""
    if precision not in PRECISIONS:
        raise unknown("precision", precision, PRECISIONS, "--precision")
    if kernels not in KERNELS:
        raise unknown("kernels", kernels, KERNELS, "--kernels")
    if optimizer not in optimizers.OPTIMIZERS:
        raise unknown("optimizer", optimizer, optimizers.OPTIMIZERS, "--optimizer")
    if dtype not in WEIGHTS_DTYPES:
        raise unknown("weights dtype", dtype, WEIGHTS_DTYPES, "--weights-dtype")
    if attention not in ATTENTIONS:
        raise unknown("attention implementation", attention, ATTENTIONS, "--attention")
    for flag, value in (("--batch-size", batch_size), ("--seq-len", seq_len)):
        if value < 1:
            raise BadInput(f"must be a positive integer, got {value}", flag)


def _built(model: str, method: str, batch_size: int, seq_len: int, dtype: str, settings: dict | None,
           attention: str, gradient_checkpointing: bool, kernels: str = "torch", task=None,
           pooling: str | None = None):
    """(spec, bundle, body, method, config, Adapted): the inputs (checked by the caller) built on the meta device, for
    the cell's `task` and `pooling` where given (bench/tools/priced_task.py)."""
    from bench import models
    from bench.models import resolve_model

    spec = resolve_model(model, "--model")
    bundle, body, chosen, config, adapted = _adapted_model(spec, method, batch_size, seq_len, dtype, settings,
                                                          attention, gradient_checkpointing, kernels, task,
                                                          pooling)
    if gradient_checkpointing:
        try:
            models.enable_gradient_checkpointing(adapted.model)
        except Unsupported as e:
            raise BadInput(f"{spec.name}: {e}", "--gradient-checkpointing") from None
    return spec, bundle, body, chosen, config, adapted


def _step(adapted, spec, bundle, task, method: str, batch_size: int, seq_len: int, flops_only: bool = False,
          device: str = "cpu", autocast: bool = False, training: bool = True,
          objective: OptionsObjective | None = None) -> StepMeasure:
    """The fake step of `batch_size` rows (examples, with an `objective`'s options: priced_task.options_batch)."""
    batch_for = partial(fake_batch, bundle.head, task, bundle=bundle) if objective is None else \
        partial(options_batch, bundle, task, objective)
    try:
        return fake_pass.fake_step(adapted, spec.kind, batch_size, seq_len, flops_only=flops_only,
                                   batch_for=batch_for, device=device, autocast=autocast, training=training)
    except Unsupported as e:  # the objective the cell would refuse (objective_for)
        raise BadInput(f"{spec.name} cannot train task '{task.name}' with the tfew objective: {e}",
                       "--objective", ("lm", "tfew")) from None
    except Exception as e:  # e.g. a forward that branches on a tensor's value, which fake tensors lack
        hint = " (the forward reads a tensor's value, e.g. a random draw)" if "local_scalar_dense" in str(e) else ""
        raise BadInput(f"method '{method}' on {spec.name} cannot run a training step on fake tensors{hint}: "
                       f"{type(e).__name__}: {e}", "--method") from None


def _quantised_path(adapted, not_modelled: list[str]) -> dict | None:
    """What the estimate of a 4-bit base (QLoRA) is of, which the estimate prints: bitsandbytes' CUDA path, whose
    twins the model holds (bench/layers/nf4_twin.py), and the bytes of their quantisation state (buffers, in no
    figure: on a GPU, part of device_other_bytes). Added to `not_modelled` where a twin's forward (training's or
    evaluation's) multiplied few enough rows that CUDA may run bitsandbytes' fused kernel, which dequantises no
    weight: the prediction, which holds the fallback's dequantised weight, may then be above the GPU's peak, so it is
    no lower bound (the packer refuses nothing on it). None: no 4-bit layers."""
    if not getattr(adapted, "is_loaded_in_4bit", False):
        return None
    import bitsandbytes

    from bench.layers.nf4_twin import FUSED_MAX_ROWS, TWINNED_RELEASE, Linear4bitTwin

    if bitsandbytes.__version__.split(".")[:2] != TWINNED_RELEASE.split("."):
        not_modelled.append(f"the 4-bit layers are bitsandbytes {TWINNED_RELEASE}'s (bench/layers/nf4_twin.py), the "
                            f"installed one is {bitsandbytes.__version__}: its CUDA path may hold other transients")
    twins = [m for m in adapted.modules() if isinstance(m, Linear4bitTwin)]
    few = sorted({rows for m in twins for rows in m.rows_multiplied if rows <= FUSED_MAX_ROWS})
    if few:
        not_modelled.append(f"4-bit layers multiply {', '.join(map(str, few))} rows, at most {FUSED_MAX_ROWS}: a GPU "
                            "may run bitsandbytes' fused kernel there, which dequantises no weight, so the prediction "
                            "may be above the GPU's peak by one layer's dequantised weight and absmax")
    state = sum(b.nbytes for m in twins for b in m.buffers())
    return {"path": "bitsandbytes NF4 with double quantisation, as on a GPU (its CUDA path: bench/layers/nf4_twin.py)",
            "state_bytes": state}


def _eval_peak(adapted, spec, bundle, task, method: str, eval_batch_size: int, seq_len: int, device: str,
               autocast: bool, upper_bound: list[str]) -> tuple[int | None, str | None]:
    """(memory.eval_peak_bytes, None), or (None, why it is unknown): the largest of the evaluation's batches that
    eval_probe.shaped_batches makes, each on fake tensors (fake_pass.fake_eval); generation's bounds the peak from
    above, which `upper_bound` is then told (eval_probe.GENERATION_BOUND)."""
    from bench.cell import eval_probe

    if task is None and bundle.head != "classifier":
        return None, "no task (--task): how an LM head's evaluation predicts is its task's"
    if task is not None and task.members:
        return None, ("a multi-task cell's members are each evaluated with their own head: not modelled"
                      if evaluates(task) else "a pre-training stage's mixture is scored on nothing")
    task = task.evaluation if task is not None else None
    way = eval_probe.way_of(bundle.head, task)
    pad = getattr(bundle.model.config, "pad_token_id", None)
    eos = getattr(bundle.model.config, "eos_token_id", None)
    batches = eval_probe.shaped_batches(spec.kind, way, task, eval_batch_size, seq_len, pad if isinstance(pad, int)
                                        else 0, eos)
    generation = task.generation if way == eval_probe.GENERATE else None
    if generation is not None:
        upper_bound.append(eval_probe.GENERATION_BOUND)
    try:
        return max(fake_pass.fake_eval(adapted, batch, way, device, autocast, generation, eos)
                   for batch in batches), None
    except Exception as e:  # as _step: a forward fake tensors cannot run
        raise BadInput(f"method '{method}' on {spec.name} cannot run an evaluation batch on fake tensors: "
                       f"{type(e).__name__}: {e}", "--method") from None


def evaluates(task) -> bool:
    """Whether a cell on `task` evaluates: all but a pre-training stage's mixture (scored on nothing)."""
    from bench.tasks.mixture import is_multitask

    return task is None or not task.members or is_multitask(task)


def estimate(model: str, method: str, batch_size: int = 8, seq_len: int = 512, optimizer: str = "adamw",
             dtype: str = "fp32", settings: dict | None = None, attention: str = "auto",
             gradient_checkpointing: bool = False, shards: int = 1, kernels: str = "torch", task=None,
             pooling: str | None = None, precision: str = "auto", step_device: str = "cuda",
             eval_batch_size: int = TrainConfig.eval_batch_size, objective: OptionsObjective | None = None) -> dict:
    """Everything `peft-bench estimate` prints, keyed as in a record (docs/measurement.md); `settings`:
    the method's (default: its defaults); `attention` and `gradient_checkpointing`: the training settings
    (bench.config), checkpointing's recomputed forwards counted in the FLOPs as the records' probe counts them;
    `shards` > 1: the memory of one of that many devices under FSDP2, `batch_size` per device (bench.tools.sharding);
    `kernels`: the training setting, liger's memory as bench.tools.liger_memory models it (the step's FLOPs are the
    same products; the forward per example is the torch step's, the forward evaluation runs); `task`: a cell's
    (tasks.TaskSpec), whose head, mixture and routing the model and its step then have as the cell's
    (bench/tools/priced_task.py); `pooling`: the training setting as the grid resolved it (cls or mean on an
    encoder's classifier; None: the model's own); `precision`: the training setting, the step's as on `step_device`
    (cuda, what estimates plan: a GPU cell's kernels and, under `auto` or `bf16`, its bf16 autocast,
    bench/tools/cuda_step.py; cpu: the CPU's kernels, which tests compare with real CPU steps; the optimizer's update is
    CUDA's either way; a Fisher-masked method's scoring passes run under the step's autocast, as a cell's do);
    `eval_batch_size`: the training setting, the batches the cell's evaluation predicts in
    (memory.eval_peak_bytes at prompts and answer options of `seq_len` tokens, bench/cell/eval_probe.py); `objective`:
    a T-Few-objective cell's (priced_task.objective_of), whose step, and Fisher scoring passes, run on options batches
    of `batch_size` examples (priced_task.options_batch), `tokens` then the options batch's."""
    from bench import methods, models
    from bench.layers.attention_prefix import implementation_of

    check_inputs(batch_size, seq_len, optimizer, dtype, attention, kernels, precision)
    unshardable = methods.for_cell(method, "--method").unshardable
    if shards > 1 and unshardable:
        raise BadInput(f"method '{method}' cannot be sharded: {unshardable}; its cell runs whole on one GPU",
                       "--shards", ("1",))
    if eval_batch_size < 1:
        raise BadInput(f"must be a positive integer, got {eval_batch_size}", "--eval-batch-size")
    spec, bundle, body, chosen, config, built = _built(model, method, batch_size, seq_len, dtype, settings,
                                                       attention, gradient_checkpointing, kernels, task, pooling)
    adapted = built.model
    params = built.params()
    params.update(method_params(params, head_elements(adapted, bundle.head_modules)[1], body))
    compute = compute_dtype(step_device, precision)
    upper_bound: list[str] = []  # why the prediction bounds the peak from above
    with departures() as not_modelled:
        step = _step(adapted, spec, bundle, task, method, batch_size, seq_len, device=step_device,
                     autocast=compute == "bf16", objective=objective)
        eval_peak, eval_unknown = _eval_peak(adapted, spec, bundle, task, method, eval_batch_size, seq_len,
                                             step_device, compute == "bf16", upper_bound)
    trainable = [p for p in unique_tensors(adapted.parameters()) if p.requires_grad]
    update = optimizers.cuda_update(optimizer)  # estimates plan GPU memory: the update a CUDA cell makes
    memory = weight_bytes(adapted)
    temporaries = optimizers.update_bytes(update, [p.nbytes for p in trainable])
    memory.update(grad_bytes=step.grad_bytes, optimizer_bytes=optimizers.state_bytes(optimizer, trainable),
                  activation_bytes=step.activation_bytes, step_peak_bytes=step_peak_bytes(step, temporaries),
                  eval_peak_bytes=eval_peak)
    # without --task an LM head's evaluation is no cell's to price: the estimate is then of training alone, which
    # eval_unknown says (a user asking whether a model trains on a GPU gets the number)
    evaluated = evaluates(task) and not (task is None and eval_peak is None)
    if not evaluated and task is None and chosen.trains:
        eval_unknown += ", so predicted_peak_bytes is training's alone"
    memory["predicted_peak_bytes"] = predicted_peak(memory, chosen.trains, evaluated)
    memory["eval_unknown"] = eval_unknown  # why eval_peak_bytes is null
    memory["not_modelled"] = not_modelled  # where the step departs from the device's: then no lower bound
    if upper_bound:
        memory["upper_bound"] = upper_bound
    quantised = _quantised_path(adapted, not_modelled)
    if shards > 1:
        block = largest_block(adapted, fake_pass.block_stacks(adapted))
        memory = sharded_memory(memory, shards, block, step.batch_bytes, max(step.live_peaks.values(), default=0),
                                temporaries, chosen.trains, evaluated)
    one_step = training_flops(step, params["total"], spec.kind, step.positions, step.tokens)
    flops = {"train_step": one_step["train_total"], "cost_model_train_step": one_step["cost_model_train_total"],
             **forward_flops_per_example(_forward_step(adapted, spec, bundle, task, method, batch_size, seq_len,
                                                       step_device, kernels, objective, step),
                                         params["total"], spec.kind)}
    if built.selection is not None:  # its passes under the autocast of the step priced above, as the cell's run
        flops["selection"], selection_peak = selection_cost(
            built, partial(_step, adapted, spec, bundle, task, method, device=step_device, autocast=compute == "bf16",
                           objective=objective), seq_len, mask_bytes=collate_mask_bytes(spec.kind, objective, seq_len))
        memory = with_selection(memory, built.selection, selection_peak)
    return {"model": spec.name, "kind": spec.kind, "arch": spec.arch, "head": bundle.head,
            "task": task.name if task is not None else None,
            "method": chosen.name, "family": chosen.family, "config": config,
            "precision": precision, "compute_dtype": compute, "step_device": step_device,
            "batch_size": batch_size, "eval_batch_size": eval_batch_size, "seq_len": seq_len, "tokens": step.tokens,
            "objective": objective._asdict() if objective is not None else None,
            "optimizer": optimizer,
            "optimizer_update": update,
            "dtype": models.dtype_name(bundle.model), "attention": implementation_of(bundle.model),
            "gradient_checkpointing": gradient_checkpointing, "kernels": kernels, "quantised": quantised,
            "params": params, "memory": memory, "flops": flops}


def _forward_step(adapted, spec, bundle, task, method: str, batch_size: int, seq_len: int, device: str, kernels: str,
                  objective: OptionsObjective | None, step: StepMeasure) -> StepMeasure:
    """The step whose forward prices one evaluated sequence (flops.forward_per_example): the training `step` where it
    is the LM loss's on the model's own head; else an LM-loss step of as many rows, FLOPs only. Liger's fused loss
    runs the head's gradient products in its forward, while a forward without labels (evaluation's) runs the model's
    own head; an options step's rows are options, not sequences (an encoder-decoder's decoder rows)."""
    if kernels == "torch" and objective is None:
        return step
    from bench.tools.liger_memory import twins_unbound

    with twins_unbound(adapted) if kernels != "torch" else contextlib.nullcontext():
        return _step(adapted, spec, bundle, task, method, batch_size, seq_len, flops_only=True, device=device)


def step_flops(model: str, method: str, batch_size: int, seq_len: int, dtype: str = "fp32",
               settings: dict | None = None, attention: str = "auto", gradient_checkpointing: bool = False,
               task=None, pooling: str | None = None, step_device: str = "cuda",
               objective: OptionsObjective | None = None) -> dict:
    """`estimate(...)["flops"]`'s train_step, forward_per_example and selection (0 for a method that scores nothing
    before training), the same counts, from the FLOPs-only pass (fake_step's flops_only): what `run --dry-run`
    prices a cell's training steps, its selection passes and its evaluation's forward passes with, without the
    memory account's extra passes; `objective`: as estimate's."""
    check_inputs(batch_size, seq_len, dtype=dtype, attention=attention)
    spec, bundle, _, _, _, built = _built(model, method, batch_size, seq_len, dtype, settings, attention,
                                          gradient_checkpointing, task=task, pooling=pooling)
    step = _step(built.model, spec, bundle, task, method, batch_size, seq_len, flops_only=True, device=step_device,
                 objective=objective)
    train = training_flops(step, count_params(built.model)["total"], spec.kind, step.positions, step.tokens)
    selection = 0 if built.selection is None else selection_cost(
        built, partial(_step, built.model, spec, bundle, task, method, device=step_device, objective=objective),
        seq_len, flops_only=True)[0]
    forward = _forward_step(built.model, spec, bundle, task, method, batch_size, seq_len, step_device, "torch",
                            objective, step)
    return {"train_step": train["train_total"], "forward_per_example": forward.forward_flops // forward.rows,
            "selection": selection}


def render(result: dict) -> str:
    """The estimate as text, each figure under its record name."""
    p, m, f = result["params"], result["memory"], result["flops"]
    task = f" for {result['task']}" if result["task"] else ""
    lines = [f"{result['model']} ({result['kind']}, {result['head']} head{task}) + {result['method']} "
             f"({result['family']}); "
             f"batch {result['batch_size']} × {result['seq_len']} tokens (evaluation's {result['eval_batch_size']}), "
             f"{result['optimizer']} "
             f"({result['optimizer_update']} update), {result['dtype']} weights"
             + (", bf16 autocast" if result["compute_dtype"] == "bf16" else "") + f", {result['step_device']} kernels, "
             f"{result['attention']} attention"
             + (", gradient checkpointing" if result["gradient_checkpointing"] else "")
             + (f", {result['kernels']} kernels" if result["kernels"] != "torch" else "")
             + (f", tfew objective ({result['objective']['options']} answer options an example, a row each)"
                if result["objective"] else ""),
             f"params   total {p['total']:,}  trainable {p['trainable']:,} ({p['trainable_pct']:.4g} %)  "
             f"method {p['method']:,} ({p['method_pct']:.4g} % of the model without its head)"]
    for fig in [fig for fig in FIGURES.values() if fig.section == "memory" and fig.determined and fig.unit == "bytes"
                and (fig.recorded or fig.name in m)]:  # an estimate-only figure where the method has it
        value = m[fig.name]
        lines.append(f"memory   {fig.name:<22}" + (f"{fig.show(value):>14}  ({value:,} bytes)" if value is not None
                                                   else f"{'unknown':>14}"))
    for key, value in f.items():
        lines.append(f"flops    {key:<34}{value:>12.4g}")
    if m.get("shards"):
        lines.append(f"memory   per device of {m['shards']} (FSDP2), with {m['gathered_bytes']:,} bytes of gathered "
                     "blocks in the step peak: bench/tools/sharding.py")
    if result["quantised"]:
        lines.append(f"4-bit base: {result['quantised']['path']}; its quantisation state, "
                     f"{result['quantised']['state_bytes']:,} bytes, is in no figure above")
    lines += [f"not modelled: {reason}" for reason in m["not_modelled"]]
    lines += [f"upper bound: {reason}" for reason in m.get("upper_bound", [])]
    if m["eval_unknown"]:
        lines.append(f"eval_peak_bytes unknown: {m['eval_unknown']}")
    lines.append("(activations from a fake-tensor pass of one unpadded step; definitions: docs/measurement.md)")
    return "\n".join(lines)
