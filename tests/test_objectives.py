"""T-Few's loss against a computation from per-option forward passes."""

import math

import pytest
import torch

from bench.cell.objectives import option_batch, tfew_terms
from bench.tasks.features import train_features
from bench.tasks.registry import builtin_tasks


def option_token_logprobs(model, prompt, option):
    """log p of each option token given the prompt, from one unpadded encoder-decoder pass."""
    out = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([option])).logits[0]
    logp = torch.log_softmax(out, -1)
    return [float(logp[t, y]) for t, y in enumerate(option)]


def two_choices(tiny_bundle, first_gold: str):
    """Two synth-choice examples on tiny-t5, the first's gold option `first_gold`: (model, features, batch,
    each option's example, each option's gold flag)."""
    bundle = tiny_bundle("tiny-t5", "multiple_choice")
    rows = [{"sentence": "a great movie", "choice1": first_gold, "choice2": "dull", "label": 0},
            {"sentence": "the dull plot was boring", "choice1": "a lovely long plot", "choice2": "plot", "label": 1}]
    feats = train_features(builtin_tasks()["synth-choice"], bundle, rows, 64, seed=0)
    return (bundle.model.eval(), feats, *option_batch(feats, bundle.kind, bundle.tokenizer.pad_token_id))


def test_tfew_loss_matches_its_definition(tiny_bundle):
    model, feats, batch, example, is_gold = two_choices(tiny_bundle, "great")
    with torch.no_grad():
        got = float(sum(tfew_terms(model, batch, example, is_gold).values()))
        terms = {name: float(value) for name, value in tfew_terms(model, batch, example, is_gold).items()}
        lm, ul, ul_tokens, ln = 0.0, 0.0, 0, 0.0
        for f in feats:
            per_option = [option_token_logprobs(model, f["prompt_ids"], o) for o in f["choice_ids"]]
            gold = per_option[f["gold"]]
            lm += -sum(gold) / len(gold)
            for j, lps in enumerate(per_option):
                if j != f["gold"]:
                    ul += -sum(math.log(1 - math.exp(lp)) for lp in lps)
                    ul_tokens += len(lps)
            means = [sum(lps) / len(lps) for lps in per_option]
            ln += -(means[f["gold"]] - math.log(sum(math.exp(m) for m in means)))
    expected = lm / len(feats) + ul / ul_tokens + ln / len(feats)
    assert got == pytest.approx(expected, rel=1e-4)
    assert terms == pytest.approx({"lm": lm / len(feats), "ul": ul / ul_tokens, "ln": ln / len(feats)}, rel=1e-4)


def test_tfews_own_loss_details_are_settings(tiny_bundle):
    """T-Few's EncoderDecoder.py: L_LM is the cross-entropy over every gold token of the batch at once, and L_UL is
    -log(1 - p + 0.01); each computed here token by token."""
    model, feats, batch, example, is_gold = two_choices(tiny_bundle, "a truly great and lovely film")
    with torch.no_grad():
        terms = {k: float(v) for k, v in tfew_terms(model, batch, example, is_gold, "tokens", 0.01).items()}
        gold_tokens, ul, ul_tokens = [], 0.0, 0
        for f in feats:
            per_option = [option_token_logprobs(model, f["prompt_ids"], o) for o in f["choice_ids"]]
            gold_tokens += per_option[f["gold"]]
            for j, lps in enumerate(per_option):
                if j != f["gold"]:
                    ul += -sum(math.log(1 - math.exp(lp) + 0.01) for lp in lps)
                    ul_tokens += len(lps)
    assert len({len(option_token_logprobs(model, f["prompt_ids"], f["choice_ids"][f["gold"]])) for f in feats}) > 1
    assert terms["lm"] == pytest.approx(-sum(gold_tokens) / len(gold_tokens), rel=1e-4)
    assert terms["ul"] == pytest.approx(ul / ul_tokens, rel=1e-4)


def loop_tfew(token_logp, mask, example, is_gold):
    """T-Few's three terms option by option and example by example, with boolean indexing."""
    mean = token_logp.sum(-1) / mask.sum(-1)
    gold = torch.tensor(is_gold, dtype=torch.bool)
    index = torch.tensor(example)
    lm = -mean[gold].mean()
    p = token_logp[~gold].exp().clamp(max=1 - 1e-6)
    ul = -(torch.log1p(-p) * mask[~gold]).sum() / mask[~gold].sum()
    examples = sorted(set(example))
    ln = sum(-torch.log_softmax(mean[index == i], 0)[int(gold[index == i].nonzero()[0, 0])] for i in examples)
    return lm + ul + ln / len(examples)


@pytest.mark.parametrize("impossible_token", [False, True])
def test_tfew_loss_and_its_gradient_equal_the_per_example_loop_with_no_data_dependent_op(monkeypatch,
                                                                                        impossible_token):
    """Examples with 2, 3 and 1 options, interleaved; padded tokens; a wrong option may hold a token of
    probability 0 (log-probability -inf). No op whose output shape or value the host must read back (nonzero,
    masked_select, item): on a GPU those make the host wait inside the step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bench.cell import objectives

    torch.manual_seed(0)
    example, is_gold = [0, 1, 0, 1, 1, 2], [0, 0, 1, 1, 0, 1]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    values = -torch.rand(6, 3) * 3
    if impossible_token:
        values[4, 0] = -torch.inf  # option 2 of example 1, a wrong one
    logp = values.requires_grad_()
    monkeypatch.setattr(objectives, "token_logprobs", lambda model, batch: (logp * mask, mask))

    class Ops(TorchDispatchMode):
        seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            masks = [t for t in torch.utils._pytree.tree_leaves(args) if torch.is_tensor(t) and t.dtype == torch.bool]
            self.seen.add(f"{name} by mask" if name.startswith("index") and masks else name)
            return func(*args, **(kwargs or {}))

    with Ops() as ops:
        got = sum(tfew_terms(None, {}, torch.tensor(example), torch.tensor(is_gold)).values())
        (grad,) = torch.autograd.grad(got, logp)
    assert not ops.seen & {"nonzero", "masked_select", "_local_scalar_dense", "item", "unique", "index by mask",
                           "index_put by mask"}
    assert "index" in ops.seen  # integer gathers are seen, and allowed (their shape is the index's)
    want = loop_tfew(logp * mask, mask.float(), example, is_gold)
    (want_grad,) = torch.autograd.grad(want, logp)
    assert torch.isfinite(got) and torch.isfinite(grad).all()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)


def test_a_record_keeps_each_loss_term(tmp_path):
    """A T-Few cell's record holds lm, ul and ln at its first step and over its last steps, and they add up to the
    loss it records; an lm cell's one term is its loss."""
    from bench.cell.recipe import run_cell
    from bench.plan import grid
    from bench.plan.suite import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmethods: [lora, {name: ia3, label: ia3-tfew, train: {objective: tfew}}]\n"
                     "models: [tiny-t5]\ntasks: [synth-choice]\nseeds: [1]\n"
                     "train: {max_steps: 12, batch_size: 4, max_length: 32, max_eval_samples: 8}\n")
    lm_cell, tfew_cell = grid.expand(load_suite(str(suite)))
    tfew = run_cell(tfew_cell, quiet=True)["train"]
    assert set(tfew["first_loss_terms"]) == {"lm", "ul", "ln"}
    assert sum(tfew["first_loss_terms"].values()) == pytest.approx(tfew["first_loss"], rel=1e-5)
    assert sum(tfew["final_loss_terms"].values()) == pytest.approx(tfew["final_loss"], rel=1e-5)
    lm = run_cell(lm_cell, quiet=True)["train"]
    assert lm["first_loss_terms"] == {"lm": pytest.approx(lm["first_loss"])}


def test_without_unlikelihood_the_loss_is_lm_plus_ln(tiny_bundle):
    """T-Few's prompt tuning (`unlikely_loss: 0`): L_UL leaves the loss and the recorded terms."""
    from bench.cell.objectives import objective_for

    model, feats, batch, example, is_gold = two_choices(tiny_bundle, "great")
    bundle = tiny_bundle("tiny-t5", "multiple_choice")
    full = objective_for("tfew", bundle, "multiple_choice")
    without = objective_for("tfew", bundle, "multiple_choice", unlikelihood=False)
    tensors = {**batch, "option_example": torch.tensor(example), "option_gold": torch.tensor(is_gold)}
    with torch.no_grad():
        every, some = full.terms(model, tensors), without.terms(model, tensors)
        assert set(some) == {"lm", "ln"} and set(every) == {"lm", "ul", "ln"}
        assert float(without.loss(model, tensors)) == pytest.approx(float(every["lm"] + every["ln"]), rel=1e-6)
