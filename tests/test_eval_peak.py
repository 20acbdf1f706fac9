"""memory.eval_peak_bytes: the estimate's fake evaluation batch against a real CPU one; the predicted peak's phases."""

import pytest
import torch

from bench.cell import eval_probe
from bench.tasks.registry import builtin_tasks
from bench.tools.estimate import estimate
from bench.tools.fake_pass import fake_eval
from tests.adapting import adapt

ROWS, LENGTH = 5, 12


def _batches(bundle, task, rows: int = ROWS, length: int = LENGTH, padded: bool = True) -> list[dict]:
    """The estimate's batches, `padded` as they are (the last row's last position masked: the cell's usual batch,
    whose mask transformers makes), else with a mask of all ones (which transformers skips for the attention
    kernel's own, on fake tensors as on real ones: fake_pass._read_values)."""
    config = bundle.model.config
    batches = eval_probe.shaped_batches(bundle.kind, eval_probe.way_of(bundle.head, task), task, rows, length,
                                        config.pad_token_id if isinstance(config.pad_token_id, int) else 0,
                                        config.eos_token_id)
    for batch in batches:
        batch["attention_mask"][-1, -1] = int(not padded)
    return batches


@pytest.mark.parametrize("name,method,task", [
    ("tiny-encoder", "lora", "rte"),  # a classifier
    ("tiny-encoder", "head-only", "stsb"),  # a regression classifier
    ("tiny-t5", "lora", "stsb"),  # T5's classifier reads each row's end-of-sequence token
    ("tiny-t5", "ia3", "cb"),  # rank classification: each prompt encoded once, its 3 options decoded
    ("tiny-t5", "prompt-tuning", "copa"),  # soft prompts: the encoder runs on each option's row
    ("tiny-gpt2", "lora", "copa"),  # a decoder's (prompt, option) rows, the options a row fills in
    ("tiny-gpt2", "prompt-tuning", "rte"),  # virtual tokens before each row
    ("tiny-llama", "lora", "cb"),
])
@pytest.mark.parametrize("padded", [True, False])
def test_fake_evaluation_batch_reproduces_a_real_cpu_one(name, method, task, padded):
    """The estimate's pass (fake tensors, meta-built model) and the cell's (real tensors) are the same instrumented
    forward (eval_probe.eval_peak) on the same batch: the bytes must agree to the byte. Unpadded, before
    fake_pass._read_values, the fake pass built the attention mask a real forward skips (LLaMA's saved more)."""
    spec = builtin_tasks()[task]
    meta_bundle, meta_adapted = adapt(name, method, total_steps=1, meta=True, task=spec)
    real_bundle, real_adapted = adapt(name, method, total_steps=1, task=spec)
    way = eval_probe.way_of(meta_bundle.head, spec)
    for batch in _batches(meta_bundle, spec, padded=padded):
        fake = fake_eval(meta_adapted.model, batch, way)
        real = eval_peak(real_adapted.model, batch, way)
        assert fake == real > sum(t.nbytes for t in batch.values())


def eval_peak(model, batch, way):
    model.train()  # the probe puts it in eval mode (no dropout) and back
    peak = eval_probe.eval_peak(model, batch, way)
    assert model.training
    return peak


def test_the_logits_in_fp32_are_inside_a_decoders_peak():
    """A closed form under the measured figure: a decoder's rank-classification batch holds at least its logits and
    their log-softmax, both [rows, tokens, vocabulary] in fp32 (tiny-gpt2 is fp32), beside the batch."""
    spec = builtin_tasks()["rte"]
    bundle, adapted = adapt("tiny-gpt2", "lora", total_steps=1, task=spec)
    (batch,) = _batches(bundle, spec)
    rows, tokens = batch["input_ids"].shape
    vocab = bundle.model.config.vocab_size
    logits = rows * tokens * vocab * 4
    assert eval_peak(adapted.model, batch, eval_probe.OPTIONS) >= 2 * logits - 4 * rows * vocab  # the shifted copy


def test_estimate_predicts_the_evaluation_a_real_cpu_batch_holds():
    """Through `estimate` (its meta build, its batch shapes at --eval-batch-size and --seq-len): the same bytes as
    the real model's evaluation of those batches; the predicted peak is the larger phase."""
    spec = builtin_tasks()["cb"]
    result = estimate("tiny-t5", "lora", batch_size=2, seq_len=LENGTH, task=spec, eval_batch_size=ROWS,
                      step_device="cpu", precision="fp32")
    bundle, adapted = adapt("tiny-t5", "lora", total_steps=1, task=spec)
    real = max(eval_peak(adapted.model, b, eval_probe.OPTIONS) for b in _batches(bundle, spec))
    m = result["memory"]
    assert m["eval_peak_bytes"] == real and m["eval_unknown"] is None
    assert m["predicted_peak_bytes"] == m["weights_bytes"] + m["optimizer_bytes"] + max(m["step_peak_bytes"], real)


def test_a_cell_that_trains_nothing_is_predicted_by_its_evaluation_alone():
    spec = builtin_tasks()["rte"]
    m = estimate("tiny-gpt2", "zero-shot", batch_size=2, seq_len=LENGTH, task=spec, eval_batch_size=ROWS,
                 step_device="cpu")["memory"]
    assert m["predicted_peak_bytes"] == m["weights_bytes"] + m["eval_peak_bytes"]


def test_a_stage_only_trains_and_a_multi_task_cells_evaluation_is_unknown(write_suite):
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from tests.test_priced_task import five_cells

    stage = next(c for c in grid.expand(load_suite("fewshot")) if c.task.members).task  # T0's mixture: a stage
    m = estimate("tiny-t5", "ia3", 2, LENGTH, task=stage, step_device="cpu")["memory"]
    assert m["eval_peak_bytes"] is None and "scored on nothing" in m["eval_unknown"]
    assert m["predicted_peak_bytes"] == m["weights_bytes"] + m["optimizer_bytes"] + m["step_peak_bytes"]
    mixed = five_cells(write_suite)["five-mix"].task  # scored on each member
    m = estimate("tiny-encoder", "poly", 2, LENGTH, task=mixed, step_device="cpu")["memory"]
    assert m["predicted_peak_bytes"] is None and "multi-task" in m["eval_unknown"]


def test_option_tokens_bound_fixed_answers_and_leave_filled_ones_at_max_length():
    tasks = builtin_tasks()
    assert eval_probe.option_tokens(tasks["rte"], 64) == len(" not_entailment") + 2
    assert eval_probe.option_tokens(tasks["copa"], 64) == 64  # {choice1}: a row's text
    assert eval_probe.option_tokens(tasks["rte"], 4) == 4
    assert tasks["cb"].answer_counts() == [3]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5"])
def test_option_tokens_bound_what_a_tokenizer_makes_of_every_fixed_answer(name):
    """Every built-in task's fixed answers, encoded as a cell encodes them (features._encode_target)."""
    from bench.models import REGISTRY, load_tokenizer
    from bench.tasks.features import _encode_target

    tokenizer, kind = load_tokenizer(REGISTRY[name]), REGISTRY[name].kind
    checked = 0
    for task in builtin_tasks().values():
        bound = eval_probe.option_tokens(task, 512)
        if task.type in ("classification", "multiple_choice") and bound < 512:
            texts = [a for prompt in task.prompts for a in (prompt.answers or task.labels)]
            assert max(len(_encode_target(tokenizer, kind, a, 512)) for a in texts) <= bound, task.name
            checked += 1
    assert checked >= 5


def test_the_eval_batch_size_must_be_positive():
    from bench.errors import BadInput

    with pytest.raises(BadInput, match="eval-batch-size"):
        estimate("tiny-encoder", "lora", eval_batch_size=0)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5", "tiny-llama"])
def test_rank_classification_keeps_no_key_value_cache(name):
    """Before the fix, rank classification's forward returned a key-value cache (use_cache: the models' default in
    eval mode) that nothing decodes from: every layer's keys and values held at once. `estimate --model llama-2-7b
    --method lora --task rte --seq-len 1024` (64 rows): eval_peak_bytes 60,695,998,664 before, 21,313,283,584 after."""
    from bench.cell.evaluate import token_logprobs

    spec = builtin_tasks()["rte"]
    bundle, adapted = adapt(name, "lora", total_steps=1, task=spec)
    (batch,) = _batches(bundle, spec, rows=4, length=16)
    caches = []
    hook = bundle.model.register_forward_hook(lambda module, args, out: caches.append(out.past_key_values))
    with torch.no_grad():
        token_logprobs(adapted.model.eval(), batch)
    hook.remove()
    assert caches == [None]
