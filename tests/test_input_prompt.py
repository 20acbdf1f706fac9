"""prompt-tuning-tfew's prompts (bench/layers/input_prompt.py) beyond the training forward that the method matrix and
T-Few's parity check: generation with a KV cache, the decoder prompt's positions cut from the output, T5's
classifier head, and the stack called with positional arguments."""

import pytest
import torch

from bench import methods
from bench.config import TrainConfig
from bench.methods.base import ApplyContext
from bench.tasks.registry import builtin_tasks
from tests.adapting import adapt

IDS = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]])
MASK = (IDS != 0).long()


def moved_off_init():
    """tiny-t5 under prompt-tuning-tfew with every weight moved, so greedy decoding leaves the pad token."""
    _, adapted = adapt("tiny-t5", "prompt-tuning-tfew")
    model = adapted.model.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * (3.0 if p.requires_grad else 0.3))
    return model


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_with_the_cache_is_generation_without_it(beams):
    """The decoder prompt enters the cache at the first step; the later steps read it there."""
    model = moved_off_init()
    with torch.no_grad():
        cached, uncached = (model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=6, do_sample=False,
                                           num_beams=beams, use_cache=use) for use in (True, False))
    assert torch.equal(cached, uncached)
    assert (cached[:, 1:] != 0).any()


def test_greedy_generation_is_the_forward_s_argmax_step_by_step():
    model = moved_off_init()
    decoded = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=IDS, attention_mask=MASK, decoder_input_ids=decoded).logits
            decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        generated = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, decoded)


def test_outputs_keep_the_decoder_s_length_and_the_encoder_s_prompt():
    """Logits line up with the decoder input (the decoder prompt's positions are cut); the encoder's states keep
    its prompt's 10 positions in front, which the decoder's cross-attention reads."""
    model = moved_off_init()
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, decoder_input_ids=IDS[:, :3])
        positional = model.get_encoder()(IDS, MASK).last_hidden_state
    assert out.logits.shape[:2] == (2, 3)
    assert out.encoder_last_hidden_state.shape[1] == 10 + IDS.shape[1]
    torch.testing.assert_close(positional, out.encoder_last_hidden_state)


def test_t5_s_classifier_head_trains_with_both_prompts(tiny_bundle):
    """Unlike peft's prompt tuning (refused there: transformers' T5 classifier takes no input embeddings), the
    prompts are put in inside the stacks, so T5ForSequenceClassification reads its eos tokens as before."""
    bundle = tiny_bundle("tiny-t5", task=builtin_tasks()["synth-intensity"])
    chosen = methods.get("prompt-tuning-tfew")
    adapted = chosen.apply(bundle.model, chosen.resolve({}, bundle.arch, str), ApplyContext(bundle, TrainConfig(), 10))
    eos, pad = bundle.tokenizer.eos_token_id, bundle.tokenizer.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8, eos], [9, 10, eos, pad, pad]])
    out = adapted.model(input_ids=ids, attention_mask=(ids != pad).long(), labels=torch.tensor([0.5, -0.5]))
    out.loss.backward()
    trained = {n: p for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert {n for n in trained if "bench_prompt" in n} == {"transformer.encoder.bench_prompt.weight",
                                                           "transformer.decoder.bench_prompt.weight"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.values())
