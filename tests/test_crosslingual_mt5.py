"""mT5 on a cross-lingual task, end to end at toy size: an mT5-shaped checkpoint (the shipped mt5-small config's
architecture, gated GELU and an untied LM head, at the tiny models' width and depth) fine-tuned text to text on an
XNLI-like synthetic task (premise, hypothesis, entailment or not) in one language, then scored in every language:
each language's score and the transfer mean equal what the predictions give, computed here. The other methods
that build on it (a step each) end ok with a score in every language."""

from __future__ import annotations

import json
import statistics

import pytest

from bench import tiny
from bench.models import REGISTRY, untie_as_checkpoints_are
from bench.tasks.synthetic import choice
from tests import closed_forms

TASKS = """\
tasks:
  - name: synth-xnli
    description: "XNLI-like: does the hypothesis word appear in the premise? In en and two synthetic languages"
    type: classification
    source: {synthetic: choice, languages: [en, xa, xb], n_train: 256, n_eval: 24, seed: 0}
    text: [sentence, choice1]
    label: label
    labels: [entailment, contradiction]
    verbalizers: ["yes", "no"]
    template: "premise: {sentence} hypothesis: {choice1} entailment"
    metrics: [accuracy]
"""

SUITE = """\
name: xmt5
methods: [{name: lora, train: {lr: 3.0e-3}}]
models: [MODEL]
task_files: [TASKS]
tasks: [synth-xnli@xa]
seeds: [1]
train: {batch_size: 8, max_steps: 3, max_length: 40, eval_batch_size: 24}
"""


def cells(tiny_mt5, folder, methods: str, max_steps: int = 3) -> list:
    from bench.plan import grid
    from bench.plan.suite import load_suite

    tasks = folder / "tasks.yaml"
    tasks.write_text(TASKS)
    suite = SUITE.replace("MODEL", str(tiny_mt5)).replace("TASKS", str(tasks))
    suite = suite.replace("max_steps: 3", f"max_steps: {max_steps}")
    (folder / "suite.yaml").write_text(suite.replace("methods: [{name: lora, train: {lr: 3.0e-3}}]", methods))
    return grid.expand(load_suite(str(folder / "suite.yaml")))


@pytest.fixture(scope="module")
def tiny_mt5(tmp_path_factory):
    """mt5-small's shipped config at the tiny models' sizes, drawn at random and saved with the tiny tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    fields = json.loads(REGISTRY["mt5-small"].config_path().read_text())
    tokenizer = tiny.tokenizer()
    fields.update(d_model=tiny.WIDTH, d_ff=tiny.FFN, d_kv=tiny.WIDTH // tiny.HEADS, num_heads=tiny.HEADS,
                  num_layers=tiny.DEPTH, num_decoder_layers=tiny.DEPTH, vocab_size=len(tokenizer),
                  pad_token_id=tiny.PAD, eos_token_id=tiny.EOS, decoder_start_token_id=tiny.PAD)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config)
    untie_as_checkpoints_are(model, fields)  # an LM head of its own, as mT5's checkpoints have
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)  # T5's init of it
    model.config.tie_word_embeddings = False  # as mT5's config.json says
    assert type(model).__name__ == "MT5ForConditionalGeneration" and model.lm_head.weight is not model.shared.weight
    folder = tmp_path_factory.mktemp("mt5") / "tiny-mt5"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_trained_in_one_language_scored_in_each_from_its_predictions(tiny_mt5, tmp_path, monkeypatch):
    from bench.cell import evaluate as scoring
    from bench.cell.recipe import run_cell

    (cell,) = cells(tiny_mt5, tmp_path, "methods: [{name: lora, train: {lr: 3.0e-3}}]")
    predicted: dict[str, tuple[list, list]] = {}  # split -> (gold, predictions) of the last evaluation
    evaluate, evaluate_all = scoring.evaluate, scoring.evaluate_all

    def every_split(bundle, model, evalsets, task, batch_size, device, autocast, predict_main=scoring.predict,
                    before_split=None):
        def named(split):
            predicted["now"] = split
            if before_split is not None:
                before_split(split)
        return evaluate_all(bundle, model, evalsets, task, batch_size, device, autocast, predict_main, named)

    def one_split(bundle, model, evalset, task, batch_size, device, autocast, predictor=scoring.predict):
        def kept(*args):
            predictions = predictor(*args)
            predicted[predicted["now"]] = (list(evalset.gold), list(predictions))
            return predictions
        return evaluate(bundle, model, evalset, task, batch_size, device, autocast, kept)

    monkeypatch.setattr(scoring, "evaluate_all", every_split)
    monkeypatch.setattr(scoring, "evaluate", one_split)
    record = run_cell(cell, quiet=True)
    assert record["status"] == "ok", record["error"]
    # the cell loaded the checkpoint as mT5 (gated GELU, its own LM head), LoRA on q and v of the encoder's
    # self-attention and the decoder's self- and cross-attention
    mt5 = closed_forms.t5_total(tiny.WIDTH, tiny.WIDTH, tiny.FFN, tiny.DEPTH, tiny.DEPTH, tiny.HEADS, 32,
                                len(tiny.tokenizer()), gated=True, tied=False)
    lora = closed_forms.lora([(tiny.WIDTH, tiny.WIDTH)] * 2 * 3 * tiny.DEPTH)
    assert (record["params"]["total"], record["params"]["trainable"]) == (mt5 + lora, lora)
    scores = record["scores"]["metrics"]
    assert set(scores) == {"accuracy", "accuracy_en", "accuracy_xb", "accuracy_transfer"}

    drawn = [row["label"] for row in choice(24, 0 + 1)]  # the evaluation draw (seed + 1), the same in each language

    def accuracy(split: str) -> float:
        gold, predictions = predicted[split]
        assert gold == drawn and set(predictions) <= {0, 1}
        return 100.0 * sum(p == g for p, g in zip(predictions, gold)) / len(gold)

    assert scores["accuracy"] == pytest.approx(accuracy(""))  # trained on xa: its own language is the main split
    for language in ("en", "xb"):
        assert scores[f"accuracy_{language}"] == pytest.approx(accuracy(language))
    assert scores["accuracy_transfer"] == pytest.approx(statistics.fmean([accuracy("en"), accuracy("xb")]))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "adapter-pfeiffer", "ia3", "poly", "prompt-tuning", "bitfit"])
def test_each_method_trains_on_it_and_scores_every_language(tiny_mt5, tmp_path, method):
    from bench.cell.recipe import run_cell

    (cell,) = cells(tiny_mt5, tmp_path, f"methods: [{method}]", max_steps=1)
    record = run_cell(cell, quiet=True)
    assert record["status"] == "ok", record["error"]
    assert record["params"]["trainable"] > 0 and record["train"]["steps"] == 1
    scores = record["scores"]["metrics"]
    assert set(scores) == {"accuracy", "accuracy_en", "accuracy_xb", "accuracy_transfer"}
    assert all(0.0 <= value <= 100.0 for value in scores.values())
