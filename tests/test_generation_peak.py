"""memory.eval_peak_bytes of generation: the estimate's bound (one forward at the length generation ends at, its cache
kept, and generate's own tensors) against what a real CPU generate holds, greedy and under beam search."""

import dataclasses

import pytest

from bench.cell import eval_probe
from bench.cell.batching import collate
from bench.tasks.registry import builtin_tasks
from bench.tools.estimate import estimate
from bench.tools.fake_pass import fake_eval
from tests.adapting import adapt

ROWS, PROMPT, STEPS = 3, 10, 6


def _task(beams: int, name: str = "e2e"):
    return dataclasses.replace(builtin_tasks()[name], generation={"max_new_tokens": STEPS, "num_beams": beams})


def _prompts(bundle) -> dict:
    """ROWS prompts of PROMPT tokens, the last a token shorter (padded, as a cell's batch usually is), padded as
    generate's (left on a decoder)."""
    rows = [{"input_ids": list(range(5, 5 + PROMPT))}] * (ROWS - 1) + [{"input_ids": list(range(5, 4 + PROMPT))}]
    return collate(rows, bundle.tokenizer.pad_token_id, left=bundle.kind == "decoder")


def _bound_batch(bundle, task, adapted) -> dict:
    """The estimate's batch at the same rows and prompt length (its last row's last prompt token padded)."""
    (batch,) = eval_probe.shaped_batches(bundle.kind, eval_probe.GENERATE, task, ROWS, PROMPT,
                                         bundle.tokenizer.pad_token_id, bundle.tokenizer.eos_token_id)
    assert batch["attention_mask"][-1, -1] == 0 and batch["attention_mask"].sum() == batch["attention_mask"].numel() - 1
    return batch


@pytest.mark.parametrize("name,method,beams", [
    ("tiny-gpt2", "lora", 1), ("tiny-gpt2", "lora", 2),
    ("tiny-llama", "lora", 1), ("tiny-llama", "lora", 2),
    ("tiny-t5", "lora", 1), ("tiny-t5", "lora", 2),
    ("tiny-gpt2", "prompt-tuning", 2),  # its soft prompt fed once, its cache read (peft_common.cache_named_for_peft)
    ("tiny-gpt2", "prefix-tuning", 2),  # its prefix in the cache from the start
    ("tiny-t5", "prompt-tuning", 2),
])
def test_the_bound_is_above_a_real_generate_and_the_fake_pass_is_the_real_forward(name, method, beams):
    """The estimate's figure (meta-built model, fake tensors) is the real model's generation_bound to the byte, and
    at least what a real generate of the same rows and prompt length holds, every row decoding all STEPS tokens."""
    task = _task(beams)
    bundle, adapted = adapt(name, method, total_steps=1, task=task)
    meta_bundle, meta_adapted = adapt(name, method, total_steps=1, task=task, meta=True)
    tokenizer = bundle.tokenizer
    model = adapted.model.train()
    measured = eval_probe.generation_peak(model, _prompts(bundle), task.generation, tokenizer.pad_token_id,
                                          tokenizer.eos_token_id)
    assert model.training  # the probe evaluates in eval mode and puts the model back
    batch = _bound_batch(bundle, task, adapted.model)
    fake = fake_eval(meta_adapted.model, batch, eval_probe.GENERATE, generation=task.generation,
                     eos=tokenizer.eos_token_id)
    assert fake == eval_probe.generation_bound(adapted.model, batch, task.generation, tokenizer.eos_token_id)
    assert fake >= measured > sum(t.nbytes for t in _prompts(bundle).values())


def test_a_decoders_soft_prompt_is_fed_once_by_the_harnesss_generation():
    """The bound's forward has no room for a soft prompt fed again: the harness's generation (evaluate.generate_ids,
    which the probe runs) hands peft its cache under the name peft reads, so after the prefill (virtual tokens + the
    prompt) each step feeds the base model one position, as a plain model and prefix tuning do. Under peft 0.21 with
    transformers >= 5.24 a bare generate fed num_virtual_tokens + 1 a step (tests/test_generation_cache.py)."""
    lengths = {}
    for method in ("prompt-tuning", "prefix-tuning"):
        task = _task(1)
        bundle, adapted = adapt("tiny-gpt2", method, total_steps=1, task=task)
        seen = []
        hook = bundle.model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append((kwargs.get("inputs_embeds") if kwargs.get("input_ids") is None
                                                      else kwargs["input_ids"]).shape[1]), with_kwargs=True)
        eval_probe.generation_peak(adapted.model, _prompts(bundle), task.generation, bundle.tokenizer.pad_token_id,
                                   bundle.tokenizer.eos_token_id)
        hook.remove()
        lengths[method] = seen
    virtual = adapt("tiny-gpt2", "prompt-tuning", total_steps=1, meta=True)[1].model.active_peft_config
    virtual = virtual.num_virtual_tokens
    assert lengths["prompt-tuning"] == [virtual + PROMPT] + [1] * (STEPS - 1)
    assert lengths["prefix-tuning"] == [PROMPT] + [1] * (STEPS - 1)


def test_the_cells_probe_measures_its_longest_generation_batch():
    """EvalProbe's batch (evaluate.longest_batch: the longest prompts, left-padded on a decoder) through a real
    generate is under the estimate's bound at that batch's rows and longest prompt."""
    from bench.cell.evaluate import longest_batch
    from bench.tasks.data import load_rows
    from bench.tasks.features import eval_features

    task = dataclasses.replace(builtin_tasks()["synth-digits"], generation={"max_new_tokens": STEPS, "num_beams": 2})
    bundle, adapted = adapt("tiny-gpt2", "lora", total_steps=1, task=task)
    evalset = eval_features(task, bundle, load_rows(task, "validation")[:9], 32)
    batch = longest_batch(bundle, evalset, 4)
    longest = max(len(f["input_ids"]) for f in evalset.features)
    assert batch["input_ids"].shape == (4, longest) and (batch["attention_mask"][:, -1] == 1).all()  # left-padded
    pad, eos = bundle.tokenizer.pad_token_id, bundle.tokenizer.eos_token_id
    measured = eval_probe.generation_peak(adapted.model, batch, task.generation, pad, eos)
    (bound_batch,) = eval_probe.shaped_batches("decoder", eval_probe.GENERATE, task, 4, longest, pad, eos)
    assert eval_probe.generation_bound(adapted.model, bound_batch, task.generation, eos) >= measured > 0


@pytest.mark.parametrize("name,task", [("tiny-t5", "xsum"), ("tiny-gpt2", "e2e")])
def test_estimate_prices_generation_and_says_it_is_an_upper_bound(name, task):
    """Through `estimate`: the figure holds, from the config's dimensions, the whole key-value cache at the length
    generation ends at (a decoder's prompt + max_new_tokens; T5's decoder at max_new_tokens and its cross-attention at
    the prompt) and one layer's copy, for eval_batch_size × num_beams rows; the predicted peak is the larger phase."""
    spec = builtin_tasks()[task]
    m = estimate(name, "lora", batch_size=2, seq_len=16, task=spec, eval_batch_size=4, step_device="cpu")["memory"]
    assert m["eval_unknown"] is None and m["upper_bound"] == [eval_probe.GENERATION_BOUND]
    assert m["predicted_peak_bytes"] == m["weights_bytes"] + m["optimizer_bytes"] + max(m["step_peak_bytes"],
                                                                                         m["eval_peak_bytes"])
    config = adapt(name, "lora", total_steps=1, task=spec, meta=True)[0].model.config
    rows, steps = 4 * spec.generation["num_beams"], spec.generation["max_new_tokens"]
    if config.is_encoder_decoder:  # fp32 keys and values: self-attention's at the steps, cross-attention's at 16
        layer = [2 * rows * config.num_heads * config.d_kv * 4 * length for length in (steps, 16)]
        cache = config.num_decoder_layers * sum(layer)
    else:
        layer = [2 * rows * config.n_embd * 4 * (16 + steps)]
        cache = config.n_layer * layer[0]
    assert m["eval_peak_bytes"] >= cache + max(layer)


def test_the_memory_cache_key_tells_generation_settings_apart(tmp_path):
    """Before the fix, two generation cells differing only in num_beams (or max_new_tokens) had one memory cache key
    (plan_cost.eval_shape): the second read the first's evaluation peak, priced at other rows and lengths."""
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.tools.plan_cost import eval_shape

    path = tmp_path / "gen.yaml"
    path.write_text("name: gen\nmethods: [lora]\nmodels: [tiny-gpt2]\ntasks: [synth-digits]\nseeds: [1]\n")
    (cell,) = grid.expand(load_suite(str(path)), threads=1)
    shapes = {eval_shape(dataclasses.replace(cell, task=dataclasses.replace(cell.task, generation=settings)))
              for settings in ({"max_new_tokens": 12, "num_beams": 1}, {"max_new_tokens": 12, "num_beams": 2},
                               {"max_new_tokens": 24, "num_beams": 1})}
    assert len(shapes) == 3
