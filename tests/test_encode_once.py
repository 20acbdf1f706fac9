"""An encoder-decoder's rank classification runs the encoder once per prompt (as T-Few's EncoderDecoder.py): the
log-likelihoods and their gradients equal the option-by-option ones for every method that applies, and the
counted FLOPs fall by the encoder's share of the repeated options."""

import pytest
import torch
from torch.utils import flop_counter

from bench.cell.batching import collate, options_collate
from bench.cell.evaluate import encodes_once, predict, token_logprobs
from bench.tasks.features import EvalSet, lm_example
from tests.adapting import adapt

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 1], [13, 14, 15, 1], [16, 17, 18, 19, 20, 21, 1]]
OPTIONS = [[[22, 1], [23, 24, 25, 1]], [[26, 1], [27, 1], [28, 29, 1]], [[30, 31, 1]]]  # 2, 3 and 1 options


def perturbed(method: str):
    """tiny-t5 under `method`, its trained parameters moved off their start (zero up-projections would hide a
    method that the shared encoder bypasses)."""
    bundle, adapted = adapt("tiny-t5", method)
    model = adapted.model.eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return bundle, model


def both_ways(model, pad: int):
    shared = options_collate(PROMPTS, OPTIONS, pad)
    repeated = collate([lm_example("encoder-decoder", p, o) for p, opts in zip(PROMPTS, OPTIONS) for o in opts], pad)
    return shared, repeated


@pytest.mark.parametrize("method", ["zero-shot", "lora", "ia3", "bitfit", "compacter-pp", "adapter-houlsby",
                                    "prefix-tuning", "unipelt", "prompt-tuning", "prompt-tuning-tfew"])
def test_the_shared_encoder_gives_the_option_by_option_log_likelihoods_and_gradients(method):
    bundle, model = perturbed(method)
    shared, repeated = both_ways(model, bundle.tokenizer.pad_token_id)
    trained = [p for p in model.parameters() if p.requires_grad]
    results = []
    for batch in (shared, repeated):
        logp, mask = token_logprobs(model, batch)
        grads = torch.autograd.grad(logp.sum(), trained) if trained else ()
        results.append((logp.detach(), mask, grads))
    (logp_a, mask_a, grads_a), (logp_b, mask_b, grads_b) = results
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(logp_a, logp_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def counted_flops(model, batch) -> int:
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False) as counter:
        token_logprobs(model, batch)
    return counter.get_total_flops()


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_the_encoder_runs_once_per_prompt_so_fewer_flops_are_counted(method):
    bundle, model = perturbed(method)
    shared, repeated = both_ways(model, bundle.tokenizer.pad_token_id)
    assert encodes_once(model)
    assert counted_flops(model, shared) < counted_flops(model, repeated)
    # the saving is the encoder over the repeated prompts: 6 encoder rows become 3
    encoder = model.get_encoder()
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False) as once:
        encoder(input_ids=shared["input_ids"], attention_mask=shared["attention_mask"])
    rows = shared["encoder_rows"]
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False) as each:
        encoder(input_ids=shared["input_ids"][rows], attention_mask=shared["attention_mask"][rows])
    saved = each.get_total_flops() - once.get_total_flops()
    assert counted_flops(model, repeated) - counted_flops(model, shared) == saved


def test_every_method_declares_whether_it_lets_the_encoder_run_once():
    """Method.encodes_in_forward (what the dry-run prices by) says what encodes_once finds on the built model."""
    from bench import methods
    from bench.errors import Unsupported

    checked = 0
    for name, method in sorted(methods.REGISTRY.items()):
        if method.external or name in ("fishmask", "child-tuning"):  # these two need calibration batches to build
            continue
        try:
            _, adapted = adapt("tiny-t5", name)
        except Unsupported:
            continue
        assert encodes_once(adapted.model) is not method.encodes_in_forward, name
        checked += 1
    assert checked >= 25


def test_the_dry_run_prices_soft_prompt_methods_with_the_encoder_per_option():
    from bench.tools.plan_cost import encodes_in_forward

    def parts(*names):
        return {"parts": [{"name": name, "config": {}} for name in names]}

    assert encodes_in_forward("prompt-tuning", {})
    assert encodes_in_forward("compose(prompt-tuning+bitfit)", parts("prompt-tuning", "bitfit"))
    assert not encodes_in_forward("lora", {})
    assert not encodes_in_forward("compose(lora+bitfit)", parts("lora", "bitfit"))


def test_peft_soft_prompts_keep_the_repeated_prompts():
    """peft adds its soft prompt inside its own forward, which a separate encoder call would skip."""
    _, model = perturbed("prompt-tuning")
    assert not encodes_once(model)


def test_rank_classification_predicts_as_the_option_by_option_scores_rank():
    bundle, model = perturbed("lora")
    evalset = EvalSet([{"input_ids": p} for p in PROMPTS], [0, 0, 0], OPTIONS)
    with torch.no_grad():
        preds = predict(bundle, model, evalset, _task(), batch_size=4, device="cpu")
        expected = []
        for prompt, options in zip(PROMPTS, OPTIONS):
            totals = [float(token_logprobs(model, collate([lm_example("encoder-decoder", prompt, o)], 0))[0].sum())
                      for o in options]
            expected.append(max(range(len(totals)), key=totals.__getitem__))
    assert preds == expected


def test_the_cost_model_counts_each_prompt_once_on_an_encoder_decoder():
    """T-Few's accounting: inference factor (1) × N × (each prompt once + every option's tokens) / examples."""
    import contextlib

    from bench.cell.probe import inference_flops

    bundle, model = perturbed("lora")
    evalset = EvalSet([{"input_ids": p} for p in PROMPTS], [0, 0, 0], OPTIONS)
    n = 1000
    got = inference_flops(bundle, model, evalset, _task(), "cpu", contextlib.nullcontext, n)
    tokens = sum(map(len, PROMPTS)) + sum(len(o) for opts in OPTIONS for o in opts)
    assert got["cost_model_inference_per_example"] == 1 * n * tokens // 3


def _task():
    from bench.tasks.registry import builtin_tasks

    return builtin_tasks()["synth-choice"]
