"""`peft-bench estimate`: weightless figures against configs, real optimizers and real steps."""

import json
import subprocess
import sys

import pytest
import torch

from bench.cell.measure import optimizer_state_bytes
from bench.cell.probe import instrumented_step
from bench.cli import main
from bench.errors import BadInput
from bench.models import REGISTRY, resolve_model
from bench.optimizers import state_bytes
from bench.tools.estimate import estimate
from bench.tools.fake_pass import fake_step
from tests import closed_forms
from tests.adapting import adapt
from tests.conftest import ROOT

LLAMA_2_7B = closed_forms.CHECKPOINT_TOTALS["llama-2-7b"]
LLAMA_2_7B_LORA = closed_forms.lora_q_v(4096, 32)  # 32 layers, q_proj and v_proj (4096 → 4096), r=8


def test_llama_2_7b_lora_known_values():
    r = estimate("llama-2-7b", "lora", batch_size=1, seq_len=64)
    assert LLAMA_2_7B_LORA == 4_194_304
    assert r["params"]["trainable"] == LLAMA_2_7B_LORA
    assert r["params"]["total"] == LLAMA_2_7B + LLAMA_2_7B_LORA
    m = r["memory"]
    assert m["weights_bytes"] == 4 * (LLAMA_2_7B + LLAMA_2_7B_LORA)
    assert m["trainable_bytes"] == m["grad_bytes"] == 4 * LLAMA_2_7B_LORA
    step_counters = 4 * closed_forms.lora_q_v_tensors(32)  # one per A and B
    assert m["optimizer_bytes"] == 2 * 4 * LLAMA_2_7B_LORA + step_counters
    # without a task, what an LM head's evaluation runs is unknown: the prediction is training's alone, and says so
    assert m["eval_peak_bytes"] is None and "no task" in m["eval_unknown"] and "training's alone" in m["eval_unknown"]
    assert m["predicted_peak_bytes"] == m["weights_bytes"] + m["optimizer_bytes"] + m["step_peak_bytes"]


def test_bf16_base_keeps_peft_adapters_in_fp32():
    m = estimate("llama-2-7b", "lora", batch_size=1, seq_len=64, dtype="bf16", optimizer="adafactor")["memory"]
    assert m["weights_bytes"] == 2 * LLAMA_2_7B + 4 * LLAMA_2_7B_LORA
    # Adafactor: per matrix a row factor (shape[:-1]) and a column factor, plus a step counter
    a, b = 8 + 4096, 4096 + 8  # lora_A (8 × 4096): 8 rows + 4096 columns; lora_B (4096 × 8)
    assert m["optimizer_bytes"] == 32 * 2 * ((a + b) * 4 + 2 * 4)


@pytest.mark.parametrize("name", ["adamw", "adafactor", "adafactor-tfew", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optimizer_rule_matches_the_real_optimizer(name, dtype):
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in [(5, 3), (7,), (2, 3, 4)]]
    from transformers.optimization import Adafactor

    optimizer = {"adamw": torch.optim.AdamW, "adafactor": torch.optim.Adafactor, "sgd": torch.optim.SGD,
                 "adafactor-tfew": lambda ps, lr: Adafactor(ps, lr=lr, scale_parameter=True, relative_step=False,
                                                            warmup_init=False)}[name](params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert state_bytes(name, params) == optimizer_state_bytes(optimizer)


def _adapted(name: str, method: str, meta: bool):
    return REGISTRY[name], adapt(name, method, total_steps=1, meta=meta)[1].model


@pytest.mark.parametrize("name,method", [("tiny-encoder", "lora"), ("tiny-encoder", "head-only"),
                                         ("tiny-t5", "full"), ("tiny-t5", "ia3"), ("tiny-gpt2", "prompt-tuning"),
                                         ("tiny-llama", "lora"), ("tiny-encoder", "loha"), ("tiny-encoder", "lokr"),
                                         ("tiny-encoder", "boft"),
                                         ("tiny-encoder", "compose(prefix-tuning+adapter-parallel)")])
def test_fake_step_reproduces_a_real_cpu_step(name, method):
    """LoHa and LoKr draw `torch.rand(1)` and branch on it: the fake pass makes that draw for real
    (probe._ScalarDraws); before, their cells were priced unknown, as compositions were (no registry name), and
    BOFT, whose build reads its permutation's indices (bench/methods/orthogonal.py)."""
    rows, length = 3, 10
    spec, model = _adapted(name, method, meta=True)
    fake = fake_step(model, spec.kind, rows, length)
    _, real_model = _adapted(name, method, meta=False)
    real_model.train()
    ids = torch.randint(5, 100, (rows, length))
    labels = torch.zeros(rows, dtype=torch.long) if spec.kind == "encoder" else ids
    real = instrumented_step(real_model, {"input_ids": ids, "labels": labels})
    if method == "prompt-tuning":
        # peft moves its prompt token ids (expanded to the batch) to the model's device: a copy for the
        # meta-built model, as on a GPU, but not on a CPU, where the saved view keeps the 20 ids only; the
        # copy of all rows' ids is alive at the step's busiest moment
        real.activation_bytes += 8 * 20 * (rows - 1)
        real.live_peaks = {(): real.live_peaks[()] + 8 * 20 * rows}
    assert fake == real


def test_an_encoder_decoder_regression_step_reproduces_a_real_cpu_step():
    """T5 regresses (STS-B) through a classifier on each row's end-of-sequence token, after checking that every row
    has as many: that check and the selection read the token ids' values, which the fake pass keeps (the batch's
    values and what is computed from them alone: fake_pass._BatchValues); before, such a cell was priced unknown."""
    from functools import partial

    from bench.tasks.registry import builtin_tasks
    from bench.tools.priced_task import fake_batch

    rows, length, task = 3, 10, builtin_tasks()["stsb"]
    meta_bundle, meta_adapted = adapt("tiny-t5", "lora", total_steps=1, meta=True, task=task)
    batch_for = partial(fake_batch, meta_bundle.head, task, bundle=meta_bundle)
    fake = fake_step(meta_adapted.model, "encoder-decoder", rows, length, batch_for=batch_for)
    real_model = adapt("tiny-t5", "lora", total_steps=1, task=task)[1].model.train()
    batch, loss = batch_for(rows, length)
    assert meta_bundle.head == "classifier" and batch["labels"].dtype == torch.float
    real = instrumented_step(real_model, batch, loss_fn=loss)
    # the CPU's mse_loss leaves its mean in the storage of the rows' squared errors (4 bytes a row), alive until the
    # step ends; the fake's mean has one element's storage
    real.live_peaks = {(): real.live_peaks[()] - 4 * (rows - 1)}
    assert fake == real


@pytest.mark.parametrize("name,method", [("tiny-llama", "lora"), ("tiny-t5", "full"), ("tiny-encoder", "lora")])
def test_eager_attention_is_estimated_as_a_real_eager_step_saves(name, method):
    """`--attention eager` builds the model with its own matmul-softmax attention, which keeps the L×L
    probabilities for backward: the fake pass matches a real eager CPU step to the byte. Where sdpa can use
    a flash kernel (LLaMA: causal, no mask, no dropout) eager keeps more; with T5's additive position bias or
    BERT's attention dropout, sdpa on a CPU (the fake pass's device) falls back to its math kernel and keeps
    as much."""
    rows, length = 3, 10
    spec, meta_model = REGISTRY[name], adapt(name, method, total_steps=1, meta=True, attention="eager")[1].model
    real_model = adapt(name, method, total_steps=1, attention="eager")[1].model.train()
    ids = torch.randint(5, 100, (rows, length))
    labels = torch.zeros(rows, dtype=torch.long) if spec.kind == "encoder" else ids
    real = instrumented_step(real_model, {"input_ids": ids, "labels": labels})
    assert fake_step(meta_model, spec.kind, rows, length) == real
    eager = estimate(name, method, batch_size=rows, seq_len=length, attention="eager", step_device="cpu")
    sdpa = estimate(name, method, batch_size=rows, seq_len=length, step_device="cpu")
    assert (eager["attention"], sdpa["attention"]) == ("eager", "sdpa")
    assert eager["memory"]["activation_bytes"] == real.activation_bytes
    flash = name == "tiny-llama"
    assert (eager["memory"]["activation_bytes"] > sdpa["memory"]["activation_bytes"]) == flash


@pytest.mark.parametrize("name,method", [("tiny-llama", "lora"), ("tiny-t5", "full"), ("tiny-encoder", "lora")])
def test_gradient_checkpointing_is_estimated_as_a_real_checkpointed_step(name, method):
    """`--gradient-checkpointing`: the fake pass of a checkpointed model saves what a real checkpointed CPU step
    saves, to the byte, and counts its FLOPs, the recomputed forwards included: fewer activation bytes and
    more FLOPs than without. A method that cannot train under checkpointing is refused, naming the flag."""
    from bench.models import enable_gradient_checkpointing

    rows, length = 3, 10
    spec = REGISTRY[name]
    real_model = adapt(name, method, total_steps=1)[1].model.train()
    enable_gradient_checkpointing(real_model)
    ids = torch.randint(5, 100, (rows, length))
    labels = torch.zeros(rows, dtype=torch.long) if spec.kind == "encoder" else ids
    real = instrumented_step(real_model, {"input_ids": ids, "labels": labels})
    checkpointed = estimate(name, method, batch_size=rows, seq_len=length, gradient_checkpointing=True,
                            step_device="cpu")
    plain = estimate(name, method, batch_size=rows, seq_len=length, step_device="cpu")
    assert checkpointed["gradient_checkpointing"] and not plain["gradient_checkpointing"]
    assert checkpointed["memory"]["activation_bytes"] == real.activation_bytes
    assert checkpointed["memory"]["activation_bytes"] < plain["memory"]["activation_bytes"]
    assert checkpointed["flops"]["train_step"] == real.forward_flops + real.backward_flops
    assert checkpointed["flops"]["train_step"] > plain["flops"]["train_step"]
    # (on encoders peft's prefix is refused for a more basic reason under transformers >= 5.24)
    with pytest.raises(BadInput, match="gradient checkpointing|takes no past key values"):
        estimate(name, "prefix-tuning-peft", batch_size=rows, seq_len=length, gradient_checkpointing=True)


@pytest.mark.parametrize("name,method,rows,length,extrapolated", [
    ("gpt2", "lora", 2, 8, True), ("bert-base-uncased", "full", 2, 8, True), ("gpt2", "dora", 4, 64, True),
    # two stacks: the decoder's blocks send gradients back to the encoder's output
    ("t5-small", "full", 2, 8, True),
    # the gradients a finished block leaves outgrow its activations: the peak moves to the end of backward
    ("bert-base-uncased", "full", 4, 64, True),
    # where a finished block's share differs between phases, the step runs at full depth: T5's
    # cross-attention gradients, often; peft slicing its prefix per layer, between the blocks' backward
    ("t5-small", "prompt-tuning", 2, 8, False), ("t5-small", "full", 4, 64, False),
    ("gpt2", "prefix-tuning-peft", 4, 64, False), ("gpt2", "prefix-tuning", 4, 64, False)])
def test_extrapolated_depth_equals_the_full_pass(monkeypatch, name, method, rows, length, extrapolated):
    """Every figure, the most bytes alive at once included, as a pass through every block gives it; and
    the path taken: extrapolated, or the step run again at full depth."""
    import bench.tools.fake_pass as module

    spec, model = _adapted(name, method, meta=True)
    full = fake_step(model, spec.kind, rows, length, extrapolate=False)
    calls, original = [], module.fake_step
    monkeypatch.setattr(module, "fake_step",
                        lambda *a, **k: calls.append(k.get("extrapolate", True)) or original(*a, **k))
    assert module.fake_step(model, spec.kind, rows, length) == full
    assert (False not in calls) == extrapolated
    # the dry-run's FLOPs-only passes (one and two blocks a stack) give the same linear figures on every path
    linear = fake_step(model, spec.kind, rows, length, flops_only=True)
    assert (linear.forward_flops, linear.backward_flops, linear.positions, linear.tokens) == \
        (full.forward_flops, full.backward_flops, full.positions, full.tokens)


def test_a_step_the_phases_cannot_account_for_runs_at_full_depth(monkeypatch):
    """Where a finished block's share differs between phases (the prefix slices' backward runs between the
    blocks'), trusting the account would nearly double the bytes; the step runs at full depth instead."""
    spec, model = _adapted("gpt2", "prefix-tuning", meta=True)
    exact = max(fake_step(model, spec.kind, 4, 64).live_peaks.values())
    monkeypatch.setattr("bench.tools.fake_pass._consistent", lambda *args: True)
    assert max(fake_step(model, spec.kind, 4, 64).live_peaks.values()) > 1.5 * exact


def test_70b_estimates_in_little_memory():
    code = ("import json, resource, time; start = time.perf_counter(); from bench.tools.estimate import estimate; "
            "r = estimate('llama-2-70b', 'lora'); print(json.dumps({'total': r['params']['total'], "
            "'s': time.perf_counter() - start, 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"llama-2-70b + lora estimate: {figures['s']:.1f} s, {figures['rss'] / 2**20:.0f} MiB peak RSS")
    lora = closed_forms.lora_q_v(8192, 80, kv=1024)  # q: 8192², v: 8192 → 1024
    assert figures["total"] == closed_forms.CHECKPOINT_TOTALS["llama-2-70b"] + lora
    assert figures["rss"] < 2 * 2**30


def test_local_config_folder(tmp_path):
    h, layers, vocab, positions = 32, 4, 300, 64
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": h, "n_layer": layers,
                                                      "n_head": 4, "vocab_size": vocab, "n_positions": positions}))
    r = estimate(str(tmp_path), "full", batch_size=2, seq_len=16)
    total = closed_forms.gpt2_total(h, layers, 4 * h, vocab, positions)  # GPT-2's FFN: 4 × the width by default
    assert r["params"]["total"] == r["params"]["trainable"] == total
    assert r["kind"] == "decoder" and resolve_model(str(tmp_path)).source == "path"


def test_cli_json_and_text(capsys):
    assert main(["estimate", "--model", "tiny-gpt2", "--method", "lora", "--batch-size", "2", "--seq-len", "8",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["memory"]["activation_bytes"] > 0 and result["tokens"] == 16
    assert set(result["flops"]) == {"train_step", "cost_model_train_step", "forward_per_example",
                                    "cost_model_forward_per_example"}
    assert main(["estimate", "--model", "tiny-gpt2", "--method", "lora"]) == 0
    text = capsys.readouterr().out
    assert "activation_bytes" in text and "predicted_peak_bytes" in text


@pytest.mark.parametrize("args,message", [
    (["--model", "tiny-gpt2", "--method", "lora", "--optimizer", "adam"], "did you mean 'adamw'"),
    (["--model", "tiny-gpt2", "--method", "lora", "--dtype", "fp8"], "valid choices: auto, bf16, fp16, fp32"),
    (["--model", "tiny-gpt2", "--method", "lora", "--attention", "flash"], "--attention: unknown attention "
     "implementation 'flash'\n  valid choices: auto, eager, sdpa"),
    (["--model", "llama-2-7", "--method", "lora"], "did you mean 'llama-2-7b'"),
    (["--model", "tiny-gpt2", "--method", "lorra"], "did you mean 'lora'"),
    (["--model", "tiny-gpt2", "--method", "loha"], "does not apply to tiny-gpt2"),
    (["--model", "tiny-gpt2", "--method", "lora", "--seq-len", "0"], "--seq-len: must be a positive integer"),
])
def test_bad_input_exits_2_naming_the_flag(args, message, capsys):
    assert main(["estimate", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_step_that_cannot_run_on_fake_tensors_is_refused(monkeypatch, capsys):
    import bench.tools.fake_pass

    def reads_a_value(*args, **kwargs):  # what a forward branching on a tensor's value raises
        raise RuntimeError("aten._local_scalar_dense.default")

    monkeypatch.setattr(bench.tools.fake_pass, "fake_step", reads_a_value)
    assert main(["estimate", "--model", "tiny-gpt2", "--method", "lora"]) == 2
    err = capsys.readouterr().err
    assert "--method: method 'lora' on tiny-gpt2 cannot run a training step on fake tensors" in err
    assert "reads a tensor's value" in err


def test_weights_dtype_sets_the_weight_bytes_in_closed_form():
    """Every weight in the dtype asked: weights_bytes = 2 bytes × parameters for fp16/bf16 full fine-tuning;
    `auto` follows the checkpoint (LLaMA-2 ships fp16)."""
    fp32 = estimate("tiny-gpt2", "full", batch_size=1, seq_len=8, dtype="fp32")
    fp16 = estimate("tiny-gpt2", "full", batch_size=1, seq_len=8, dtype="fp16")
    assert fp16["dtype"] == "fp16" and fp32["dtype"] == "fp32"
    assert fp16["memory"]["weights_bytes"] == 2 * fp16["params"]["total"] == fp32["memory"]["weights_bytes"] // 2
    llama = estimate("llama-2-7b", "lora", batch_size=1, seq_len=16, dtype="auto")
    assert llama["dtype"] == "fp16"
    lora = llama["params"]["trainable"]  # peft keeps adapters in fp32 over a half-precision base
    assert llama["memory"]["weights_bytes"] == 2 * (llama["params"]["total"] - lora) + 4 * lora


def test_method_count_is_the_papers_lora_count_without_the_head():
    """LoRA r=8 on RoBERTa-base's query and value: 12 layers × 2 × 8 × (768 + 768) = 294,912 (the LoRA
    paper's 0.3M); the classification head (768·768 + 768 + 768·2 + 2 = 592,130) trains too, outside it."""
    r = estimate("roberta-base", "lora", batch_size=1, seq_len=16)["params"]
    head = closed_forms.roberta_classification_head(768)
    assert r["method"] == closed_forms.lora_q_v(768, 12) == 294_912
    assert r["trainable"] - r["method"] == head == 592_130
    full = estimate("roberta-base", "full", batch_size=1, seq_len=16)["params"]
    assert full["method_pct"] == 100.0 and full["method"] == full["trainable"] - head
    assert r["method_pct"] == pytest.approx(100 * 294_912 / full["method"])


def test_step_flops_are_the_estimates_counts():
    """What `run --dry-run` prices a step, the selection before training and an evaluation's forward pass with are
    `estimate`'s flops.train_step, selection (none: 0) and forward_per_example, on a model whose depth is extrapolated
    (two stacks: T5) and with a method's settings."""
    from bench.tools.estimate import step_flops

    for model, method, settings in (("t5-small", "lora", {"r": 4}), ("gpt2", "ia3", None),
                                    ("tiny-encoder", "child-tuning", {"fisher_batches": 2})):
        flops = estimate(model, method, 2, 16, settings=settings)["flops"]
        assert step_flops(model, method, 2, 16, settings=settings) == \
            {"train_step": flops["train_step"], "forward_per_example": flops["forward_per_example"],
             "selection": flops.get("selection", 0)}
    assert flops["selection"] > 0


def test_estimate_set_gives_method_settings_checked_like_a_suites(capsys):
    """--set r=16 --set target_modules=query,value: LoRA on roberta-base's q and v at rank 16 holds
    2 (A, B) × 16 × 768 × 2 modules × 12 layers parameters; a wrong key or value is exit 2 naming --set."""
    assert main(["estimate", "--model", "roberta-base", "--method", "lora", "--set", "r=16",
                 "--set", "target_modules=query,value", "--json", "--seq-len", "8", "--batch-size", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["r"] == 16 and result["config"]["target_modules"] == ["query", "value"]
    assert result["params"]["method"] == closed_forms.lora_q_v(768, 12, r=16)
    for sets, message in ((["rr=16"], "--set rr: unknown lora setting 'rr' (did you mean 'r'?)"),
                          (["r=abc"], "--set r: 'r' must be int"), (["r"], "--set: expected KEY=VALUE")):
        assert main(["estimate", "--model", "roberta-base", "--method", "lora",
                     *[x for v in sets for x in ("--set", v)]]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("model,width,layers", [("tiny-encoder", closed_forms.H, closed_forms.L),
                                                ("roberta-base", 768, 12)])
def test_poly_is_priced_with_its_skill_mixture_in_closed_form(model, width, layers):
    """Poly runs whole on the fake pass (peft's router, its check of the task ids and its relaxed-Bernoulli draw
    included): its step costs a LoRA of its rank plus the mixing of its skills, in closed form, with 4 skills and 2,
    in 1 split and in 2 (the split changes the blocks, not the FLOPs)."""
    from bench.tools.estimate import step_flops

    rows, projections = 2, [(width, width)] * 2 * layers  # query and value in every layer
    lora = step_flops(model, "lora", rows, 16, settings={"r": 8})
    for skills, splits in ((4, 1), (2, 1), (4, 2)):
        poly = step_flops(model, "poly", rows, 16, settings={"r": 8, "n_skills": skills, "n_splits": splits})
        mixture = closed_forms.poly_mixture_flops(projections, rows, skills)
        assert poly["train_step"] - lora["train_step"] == mixture["train"]
        assert rows * (poly["forward_per_example"] - lora["forward_per_example"]) == mixture["forward"]


def test_poly_router_checks_the_task_ids_on_the_fake_pass():
    """The ids reach peft's router with their values on the fake pass: its own check refuses a task id the router
    has no row for, as on real tensors (a skipped router could not)."""
    from bench.layers import task_heads
    from bench.tools import estimate as estimating

    spec = resolve_model("tiny-encoder", "--model")
    adapted = estimating._adapted_model(spec, "poly", 2, 8, "fp32", None, "auto", False)[-1].model
    fake_step(adapted, spec.kind, 2, 8, flops_only=True)  # task 0: the router's one row
    task_heads.select(adapted, 1)
    with pytest.raises(ValueError, match="Only 1 tasks available. Found task id = 1"):
        fake_step(adapted, spec.kind, 2, 8, flops_only=True)


@pytest.mark.parametrize("settings,block_size", [({}, 4), ({"boft_block_size": 16}, 16),
                                                 ({"boft_block_size": 8, "boft_n_butterfly_factor": 2}, 8)])
def test_boft_is_priced_with_its_blocks_in_closed_form(settings, block_size):
    """BOFT builds on the meta device (its butterfly indices computed for real): on roberta-base's query and value
    its parameters are its skew blocks and output scales in closed form, with the butterfly factors configured.
    More than one takes peft's CUDA extension: where it does not load, peft would build one instead, and the
    method is refused as unsupported here, never priced (nor recorded) as the other."""
    from peft.tuners.boft.layer import get_fbd_cuda

    butterfly = settings.get("boft_n_butterfly_factor", 1)
    if butterfly > 1 and get_fbd_cuda() is None:
        with pytest.raises(BadInput, match="boft_n_butterfly_factor 2 needs peft's CUDA extension"):
            estimate("roberta-base", "boft", batch_size=2, seq_len=8, settings=settings)
        return
    r = estimate("roberta-base", "boft", batch_size=2, seq_len=8, settings=settings)
    assert r["params"]["method"] == 2 * 12 * closed_forms.boft(768, 768, block_size, butterfly=butterfly)
    head_only = estimate("roberta-base", "head-only", batch_size=2, seq_len=8)
    assert r["flops"]["train_step"] > head_only["flops"]["train_step"]


@pytest.mark.parametrize("task,labels", [("sst2", 2), ("xnli@de", 3), ("stsb", 1)])
def test_task_gives_the_model_the_head_a_cell_on_it_has(task, labels, capsys):
    """`--task`: the task's classifier (its labels; one output for regression), as a cell on it has."""
    assert main(["estimate", "--model", "tiny-encoder", "--method", "lora", "--batch-size", "2", "--seq-len", "8",
                 "--task", task, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == task and result["head"] == "classifier"
    params = result["params"]
    assert params["trainable"] - params["method"] == closed_forms.roberta_classification_head(closed_forms.H, labels)


@pytest.mark.parametrize("args,message", [
    (["--task", "sts-b"], "--task: unknown task 'sts-b' (did you mean 'stsb'?)\n  valid choices: "),
    (["--task", "e2e"], "--model: tiny-encoder cannot take task 'e2e'"),
])
def test_a_task_the_registry_or_the_model_lacks_exits_2(args, message, capsys):
    assert main(["estimate", "--model", "tiny-encoder", "--method", "lora", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_composition_is_estimated_as_its_parts_added():
    """A composition's method parameters are its parts' (each adds its own tensors), and `estimate --method` takes
    one by its cell's name, an unknown part refused with the registry's names."""
    parts = ["prefix-tuning", "adapter-parallel"]
    composed = estimate("tiny-encoder", f"compose({'+'.join(parts)})", batch_size=2, seq_len=8)
    assert (composed["method"], composed["family"]) == ("compose(prefix-tuning+adapter-parallel)", "unified")
    assert composed["params"]["method"] == sum(estimate("tiny-encoder", part, batch_size=2, seq_len=8)["params"]
                                               ["method"] for part in parts)
    assert [p["name"] for p in composed["config"]["parts"]] == parts
    with pytest.raises(BadInput, match="unknown method 'nope'") as refused:
        estimate("tiny-encoder", "compose(prefix-tuning+nope)", batch_size=2, seq_len=8)
    assert refused.value.where == "--method"


def test_in_context_learning_builds_on_the_meta_device():
    """ICL's demonstrations are tokenised when its state is stored: the weightless build has no tokenizer (before,
    `estimate --method icl` failed with "TypeError: 'NoneType' object is not callable")."""
    from bench.tasks.registry import builtin_tasks

    r = estimate("t5-small", "icl", batch_size=2, seq_len=16, task=builtin_tasks()["rte"])
    assert r["params"]["trainable"] == 0 and r["memory"]["weights_bytes"] == 4 * r["params"]["total"]
