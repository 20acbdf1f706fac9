"""The pricing of a T-Few-objective cell (`train: {objective: tfew}`): its step is an options batch, every (example,
answer option) pair a row (an encoder-decoder's prompts once each), through tfew's terms (bench/tools/priced_task.py
options_batch), as the cell's real step is: the estimate, `run --dry-run`'s FLOPs and the packer's memory."""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import pytest
import torch
from torch.utils import flop_counter

from bench import methods
from bench.cell.measure import weight_bytes
from bench.cell.objectives import objective_for
from bench.cell.probe import (
    ATTENTION_FLOPS,
    LiveBytes,
    instrumented_step,
    training_flops,
)
from bench.cli import main
from bench.config import TrainConfig
from bench.methods.base import ApplyContext
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.tasks.registry import builtin_tasks
from bench.tensors import count_params
from bench.tools import plan_cost
from bench.tools.estimate import estimate, step_flops
from bench.tools.fake_pass import fake_step
from bench.tools.priced_task import (
    OptionsObjective,
    answer_options,
    collate_mask_bytes,
    objective_of,
    options_batch,
)
from bench.tools.prompt_lengths import measured_tokens, options_length
from tests.adapting import adapt, build_bundle

ROWS, LENGTH = 3, 10
TASK = builtin_tasks()["synth-choice"]  # two answer options under each template
TFEW = OptionsObjective(2, "tokens", True, 0.01)  # suites/fewshot.yaml's terms


def real_step(model: str, method: str, objective: OptionsObjective = TFEW):
    """A real CPU step of the tiny model on the options batch of ROWS examples of LENGTH tokens, through the cell's
    Objective (objective_for), with the model and its parameter count."""
    bundle, adapted = adapt(model, method, total_steps=1, task=TASK)
    batch, loss = options_batch(bundle, TASK, objective, ROWS, LENGTH)
    return instrumented_step(adapted.model.train(), batch, loss_fn=loss), count_params(adapted.model)["total"]


def test_the_options_of_a_task_are_its_templates_most():
    assert answer_options(TASK) == 2 and answer_options(builtin_tasks()["hellaswag"]) == 4
    assert objective_of(TrainConfig(objective="tfew", tfew_lm="tokens", unlikelihood_offset=0.01), TASK) == TFEW
    assert objective_of(TrainConfig(), TASK) is None


def test_the_options_batch_is_option_batchs_layout():
    """Every (example, option) pair a row: on a decoder prompt + option in one row of LENGTH tokens; on an
    encoder-decoder each prompt once (the encoder's rows) and each option a decoder row."""
    decoder = options_batch(build_bundle("tiny-gpt2", task=TASK, meta=True), TASK, TFEW, ROWS, LENGTH)[0]
    assert decoder["input_ids"].shape == decoder["labels"].shape == (ROWS * 2, LENGTH)
    assert (decoder["labels"] != -100).sum() == ROWS * 2 and "attention_mask" not in decoder
    assert decoder["option_example"].tolist() == [0, 0, 1, 1, 2, 2]
    assert decoder["option_gold"].tolist() == [1, 0] * ROWS
    t5 = options_batch(build_bundle("tiny-t5", task=TASK, meta=True), TASK, TFEW, ROWS, LENGTH)[0]
    assert t5["input_ids"].shape == t5["attention_mask"].shape == (ROWS, LENGTH)
    assert t5["labels"].shape == (ROWS * 2, LENGTH) and t5["encoder_rows"].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("model,method", [("tiny-t5", "ia3"), ("tiny-t5", "lora"), ("tiny-gpt2", "lora"),
                                          ("tiny-gpt2", "ia3"), ("tiny-llama", "ia3")])
def test_the_fake_tfew_step_is_a_real_cpu_step(model, method):
    """Bytes saved, alive at once, gradients, batch and FLOPs of the fake options step, to the byte and FLOP. On
    LLaMA the options forward (token_logprobs': no mask, use_cache=False) has transformers check its positions for
    packed sequences; before fake_pass._read_values the fake pass built the causal mask that check lets a real step
    skip, and saved 35,520 bytes more on this batch of 6 rows (2,960 a row and layer: the mask in fp32, and keys and
    values repeated to the query heads)."""
    bundle, adapted = adapt(model, method, total_steps=1, meta=True, task=TASK)
    fake = fake_step(adapted.model, bundle.kind, ROWS, LENGTH, batch_for=partial(options_batch, bundle, TASK, TFEW))
    assert fake == real_step(model, method)[0]


@pytest.mark.parametrize("model,method", [("tiny-t5", "ia3"), ("tiny-gpt2", "lora")])
def test_the_estimate_of_a_tfew_cell_is_its_real_step(model, method):
    """estimate(objective=): flops.train_step and the tokens are the real options step's, the activations and grads
    its bytes; without the objective it prices the LM step of ROWS rows, fewer FLOPs."""
    real, params = real_step(model, method)
    result = estimate(model, method, ROWS, LENGTH, task=TASK, objective=TFEW, step_device="cpu", precision="fp32")
    assert result["flops"]["train_step"] == \
        training_flops(real, params, result["kind"], real.positions, real.tokens)["train_total"]
    assert result["tokens"] == real.tokens and result["objective"]["options"] == 2
    memory = result["memory"]
    assert (memory["activation_bytes"], memory["grad_bytes"]) == (real.activation_bytes, real.grad_bytes)
    lm = estimate(model, method, ROWS, LENGTH, task=TASK, step_device="cpu", precision="fp32")
    assert lm["flops"]["train_step"] < result["flops"]["train_step"]
    # the forward an evaluated sequence costs is the LM step's, whatever the objective trains with
    assert lm["flops"]["forward_per_example"] == result["flops"]["forward_per_example"]


def test_the_dry_run_prices_a_tfew_cell_as_its_real_step(write_suite, tmp_path, monkeypatch):
    """Before, `run --dry-run` priced the tfew cell's steps as LM steps of batch_size rows (the lm cell's price, from
    the same shape key): now max_steps × the real options step's FLOPs, a shape of its own."""
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    suite = write_suite("name: s\nmethods: [ia3]\nmodels: [tiny-t5]\ntasks: [synth-choice]\nseeds: [1]\n"
                        f"train: {{max_steps: 3, batch_size: {ROWS}, max_length: {LENGTH}}}\n")
    lm_cell = grid.expand(load_suite(str(suite)))[0]
    tfew_cell = dataclasses.replace(lm_cell, train=dataclasses.replace(
        lm_cell.train, objective="tfew", tfew_lm="tokens", unlikelihood_offset=0.01))
    assert plan_cost.shape_of(tfew_cell) != plan_cost.shape_of(lm_cell)
    known: dict = {}
    lm_flops, _ = plan_cost.cell_flops(lm_cell, known)
    flops, how = plan_cost.cell_flops(tfew_cell, known)
    # the dry run prices a GPU's step (its attention kernels): the estimate's of the same objective, which on the CPU
    # is the real step's (test_the_estimate_of_a_tfew_cell_is_its_real_step)
    priced = estimate("tiny-t5", "ia3", ROWS, LENGTH, task=TASK, objective=TFEW)["flops"]["train_step"]
    assert flops == 3 * priced == 3 * step_flops("tiny-t5", "ia3", ROWS, LENGTH, task=TASK,
                                                   objective=TFEW)["train_step"]
    assert flops > lm_flops and how == "3 steps"
    real = real_step("tiny-t5", "ia3")[0]  # the packer's memory: the options step's
    assert plan_cost.predicted_memory(tfew_cell, step_device="cpu")["activation_bytes"] == real.activation_bytes


def test_the_selection_of_a_tfew_cell_is_priced_with_its_options_batches():
    """fishmask on a tfew cell scores the tfew loss on options batches collated by the objective, one example each
    (recipe.calibration): flops.selection and memory.selection_peak_bytes are a real selection's on them."""
    settings = {"fisher_samples": 2 * ROWS}
    result = estimate("tiny-t5", "fishmask", ROWS, LENGTH, settings=settings, task=TASK, objective=TFEW,
                      step_device="cpu", precision="fp32")
    bundle = build_bundle("tiny-t5", task=TASK)
    one, loss = options_batch(bundle, TASK, TFEW, 1, LENGTH)
    made = [dict(one) for _ in range(2 * ROWS)]

    def calibration(n: int, per_example: bool = False) -> list[dict]:
        assert per_example and n * ROWS == len(made)
        return made

    chosen = methods.get("fishmask")

    def apply():
        return chosen.apply(bundle.model, chosen.resolve(settings, bundle.arch, str),
                            ApplyContext(bundle, TrainConfig(batch_size=ROWS, max_length=LENGTH), 1, calibration,
                                         task=TASK, loss=loss))
    with flop_counter.FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        apply()
    assert result["flops"]["selection"] == counter.get_total_flops() > 0
    bundle = build_bundle("tiny-t5", task=TASK)  # scores from 0
    with LiveBytes() as live:
        apply()
    calibration_bytes = sum(t.nbytes for batch in made for t in batch.values())
    assert result["memory"]["selection_peak_bytes"] == \
        weight_bytes(bundle.model)["weights_bytes"] + calibration_bytes + live.peak
    assert torch.is_tensor(one["attention_mask"])


@pytest.mark.parametrize("args,message", [
    (["--objective", "tfw", "--task", "synth-choice"], "unknown objective 'tfw'"),
    (["--objective", "tfew"], "give the task (--task)"),
    (["--objective", "tfew", "--task", "stsb"], "cannot train task 'stsb' with the tfew objective")])
def test_a_tfew_estimate_the_cell_would_refuse_exits_2_naming_the_flag(args, message, capsys):
    assert main(["estimate", "--model", "tiny-t5", "--method", "ia3", *args]) == 2
    err = capsys.readouterr().err
    assert "--objective" in err and message in err


def test_the_cli_prices_the_options_step(capsys):
    assert main(["estimate", "--model", "tiny-t5", "--method", "ia3", "--task", "synth-choice", "--objective", "tfew",
                 "--batch-size", "2", "--seq-len", "8", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["objective"] == {"options": 2, "tfew_lm": "examples", "unlikelihood": True,
                                    "unlikelihood_offset": 0.0, "option_tokens": None}
    assert printed["tokens"] == 2 * 8 + 2 * 2 * 8  # two prompts through the encoder, four options through the decoder


def measured_lengths(model: str, max_length: int = 64) -> tuple[int, int]:
    """(the row's priced length, the options') of a tfew cell of `model` on TASK: its prompts and options measured
    (prompt_lengths.measured_tokens on the task's rows, under both templates)."""
    spec = build_bundle(model, task=TASK, meta=True).spec
    measured, how = measured_tokens(TASK, spec, None, max_length)
    length, option, _ = options_length(spec.kind, measured, max_length, how)
    return length, option


def hand_made_step(model: str, method: str, prompt_tokens: int, option_tokens: int):
    """A real CPU step of the tiny model on ROWS examples built here (not by options_batch): each a prompt of
    `prompt_tokens` tokens and two options of `option_tokens` (a decoder's prompt starting with <s>; every prompt
    and option ending with </s> where the model reads one), collated and scored by the cell's own Objective."""
    bundle, adapted = adapt(model, method, total_steps=1, task=TASK)
    eos, bos = bundle.model.config.eos_token_id, bundle.model.config.bos_token_id
    if bundle.kind == "encoder-decoder":
        prompt = [5] * (prompt_tokens - 1) + [eos]
    else:
        prompt = [bos] + [5] * (prompt_tokens - 1)
    options = [[6 + j] * (option_tokens - 1) + [eos] for j in range(2)]
    features = [{"prompt_ids": prompt, "choice_ids": options, "gold": i % 2} for i in range(ROWS)]
    chosen = objective_for("tfew", bundle, TASK.type, TFEW.tfew_lm, TFEW.unlikelihood_offset, TFEW.unlikelihood)
    batch = chosen.collate(features)
    if bundle.kind != "encoder-decoder":  # all ones, its bytes the estimate's collate_mask_bytes (options_batch)
        assert batch.pop("attention_mask").nbytes == ROWS * collate_mask_bytes(bundle.kind, TFEW, prompt_tokens +
                                                                                option_tokens)
    return instrumented_step(adapted.model.train(), batch, loss_fn=chosen.loss)


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-gpt2"])
def test_the_fake_step_at_measured_lengths_is_a_real_step_at_them(model):
    """At the measured lengths (an encoder-decoder: the prompt's for the encoder rows, the options' for the decoder
    rows; a decoder: rows of prompt + option, the option the last of them), the fake options step is a real CPU step
    on examples of those lengths to the byte and FLOP, its bytes alive at once included (tiny-t5's were 3,340 above
    the real step's at 23 encoder and 2 decoder tokens while the fake pass could not read the values transformers'
    mask decisions read: fake_pass._read_values); on the encoder-decoder it is cheaper than the bound (options as
    long as the prompt) it replaces."""
    length, option = measured_lengths(model)
    t5 = model == "tiny-t5"
    assert 1 < option < 10 and option < length < 64  # a few tokens an option, far below the bound
    objective = TFEW._replace(option_tokens=option)
    bundle, adapted = adapt(model, "ia3", total_steps=1, meta=True, task=TASK)
    fake = fake_step(adapted.model, bundle.kind, ROWS, length, batch_for=partial(options_batch, bundle, TASK,
                                                                                objective))
    real = hand_made_step(model, "ia3", length if t5 else length - option, option)
    assert fake == real
    bound = step_flops(model, "ia3", ROWS, length, task=TASK, objective=TFEW)["train_step"]
    priced = step_flops(model, "ia3", ROWS, length, task=TASK, objective=objective)["train_step"]
    assert priced < bound if t5 else priced == bound  # a decoder's row is as long whatever the option's share
