"""T-Few's loss against a computation from per-option forward passes."""

import math

import pytest
import torch

from bench.cell.objectives import option_batch, tfew_loss
from bench.models import REGISTRY, load_bundle
from bench.tasks import builtin_tasks
from bench.tasks.features import train_features


def option_token_logprobs(model, prompt, option):
    """log p of each option token given the prompt, from one unpadded encoder-decoder pass."""
    out = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([option])).logits[0]
    logp = torch.log_softmax(out, -1)
    return [float(logp[t, y]) for t, y in enumerate(option)]


def test_tfew_loss_matches_its_definition():
    bundle = load_bundle(REGISTRY["tiny-t5"], "multiple_choice", None, seed=0)
    model = bundle.model.eval()
    task = builtin_tasks()["synth-choice"]
    rows = [{"sentence": "a great movie", "choice1": "great", "choice2": "dull", "label": 0},
            {"sentence": "the dull plot was boring", "choice1": "lovely", "choice2": "plot", "label": 1}]
    feats = train_features(task, bundle, rows, 64, seed=0)
    batch, example, is_gold = option_batch(feats, bundle.kind, bundle.tokenizer.pad_token_id)
    with torch.no_grad():
        got = float(tfew_loss(model, batch, example, is_gold))
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
