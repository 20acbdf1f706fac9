"""Generation is what the model computes: the harness's generate (bench.cell.evaluate.predict) against a manual greedy
loop without a key-value cache (the argmax of the whole sequence's forward at each step), and its beam search
against transformers' beam search without a cache, for every method of the matrix on a decoder and on T5.

peft 0.21 with transformers >= 5.24 looks for the cache under another keyword than generate hands it, so cached
generation fed the soft prompt again at every step (bench.methods.peft_common.peft_generation_misses_cache)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import methods
from bench.cell import evaluate
from bench.errors import Unsupported
from bench.models import REGISTRY
from bench.tasks.data import load_rows
from bench.tasks.features import eval_features
from bench.tasks.registry import builtin_tasks
from tests.test_methods import MODELS, UNSUPPORTED, fresh

EXAMPLES = 3


def decoded(bundle, ids: list[int]) -> str:
    """Tokens as the harness reads a generation: up to the end-of-sequence token, without special tokens."""
    eos = bundle.tokenizer.eos_token_id
    return bundle.tokenizer.decode(ids[:ids.index(eos)] if eos in ids else ids, skip_special_tokens=True).strip()


@torch.no_grad()
def greedy_without_cache(bundle, model, input_ids: list[int], new_tokens: int) -> str:
    """Each step the argmax of the forward over the prompt and every token so far, nothing kept between steps."""
    ids = torch.tensor([input_ids])
    if bundle.kind == "encoder-decoder":
        out = torch.tensor([[bundle.model.config.decoder_start_token_id]])
        for _ in range(new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=out,
                           use_cache=False).logits
            out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], 1)
        return decoded(bundle, out[0, 1:].tolist())
    out = ids
    for _ in range(new_tokens):
        logits = model(input_ids=out, attention_mask=torch.ones_like(out), use_cache=False).logits
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return decoded(bundle, out[0, ids.shape[1]:].tolist())


@torch.no_grad()
def beams_without_cache(bundle, model, input_ids: list[int], task) -> str:
    ids = torch.tensor([input_ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, do_sample=False,
                         max_new_tokens=task.generation["max_new_tokens"], num_beams=task.generation["num_beams"],
                         pad_token_id=bundle.tokenizer.pad_token_id, eos_token_id=bundle.tokenizer.eos_token_id)
    return decoded(bundle, out[0, 1 if bundle.kind == "encoder-decoder" else ids.shape[1]:].tolist())


@pytest.mark.slow
@pytest.mark.parametrize("model_name", [m for m in MODELS if m != "tiny-encoder"])
@pytest.mark.parametrize("method", list(methods.REGISTRY))
def test_generation_equals_decoding_without_a_cache(method, model_name):
    """Weights perturbed (seeded) so that a prompt fed again, or a cache read wrong, changes the tokens.
    Not the reference for peft's prefix tuning on LLaMA and T5: generate without a cache is wrong there itself (its
    forward finds the prefix in the cache and starts the tokens' positions after it; generate without a cache starts
    them at 0, which rotary and relative position biases read; under peft 0.22 LLaMA's fails outright)."""
    if (method, REGISTRY[model_name].arch) in UNSUPPORTED:
        pytest.skip("the matrix records this pair unsupported")
    try:
        bundle, adapted, _ = fresh(model_name, method)
    except Unsupported as refused:
        pytest.skip(str(refused))
    model = adapted.model
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    task = builtin_tasks()[MODELS[model_name]]
    evalset = eval_features(task, bundle, load_rows(task, "validation")[:EXAMPLES], 32)
    new_tokens = task.generation["max_new_tokens"]
    greedy = dataclasses.replace(task, generation={**task.generation, "num_beams": 1})
    beams = dataclasses.replace(task, generation={**task.generation, "num_beams": 2})
    for i, feature in enumerate(evalset.features):
        one = evalset.rows(i, i + 1)
        assert evaluate.predict(bundle, model, one, greedy, 1, "cpu") == [
            greedy_without_cache(bundle, model, feature["input_ids"], new_tokens)], (method, model_name, i)
        if method != "prefix-tuning-peft" or model_name == "tiny-gpt2":
            assert evaluate.predict(bundle, model, one, beams, 1, "cpu") == [
                beams_without_cache(bundle, model, feature["input_ids"], beams)], (method, model_name, i)
    assert "prepare_inputs_for_generation" not in vars(model)  # peft's own again, after evaluation

