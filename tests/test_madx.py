"""MAD-X end to end (bench/methods/madx.py): language adapters trained by masked-LM in stages
(bench/tasks/masked_lm.py), a task adapter trained on top of the training language's, and the target languages'
adapters swapped in to score them."""

import json
import random

import pytest

from bench.cli import main
from bench.config import TrainConfig
from bench.methods.base import ApplyContext
from bench.tasks.features import IGNORE
from bench.tasks.masked_lm import mask_tokens
from tests import closed_forms


def test_masking_follows_bert_s_recipe_by_hand():
    """20 ordinary tokens between two specials: round(0.15 × 20) = 3 are chosen, labelled with their ids; each
    becomes the mask (roll < 0.8), a random token (< 0.9) or stays, as the generator's draws say."""
    ids = [0] + list(range(10, 30)) + [2]
    out = mask_tokens(ids, {0, 2}, mask_id=4, vocab=50, draw=random.Random(7))
    draw = random.Random(7)
    chosen = sorted(draw.sample(list(range(1, 21)), 3))
    expected = list(ids)
    for i in chosen:
        roll = draw.random()
        expected[i] = 4 if roll < 0.8 else draw.randrange(50) if roll < 0.9 else ids[i]
    assert out["input_ids"] == expected
    assert out["labels"] == [ids[i] if i in chosen else IGNORE for i in range(len(ids))]
    assert mask_tokens([0, 2], {0, 2}, 4, 50, random.Random(0))["labels"] == [IGNORE, IGNORE]
    assert sum(v != IGNORE for v in mask_tokens([0, 11, 2], {0, 2}, 4, 50, random.Random(0))["labels"]) == 1


SUITE = """\
name: mx
stages:
  - {name: lang-en, method: madx, tasks: [synth-xpolarity], objective: mlm, train: {max_steps: 20, lr: 1.0e-3}}
  - {name: lang-xa, method: madx, tasks: [synth-xpolarity@xa], objective: mlm, train: {max_steps: 20, lr: 1.0e-3}}
methods:
  - {name: madx, init_from: lang-en, language_stages: {xa: lang-xa}, train: {lr: 5.0e-3}}
models: [tiny-encoder]
tasks: [synth-xpolarity]
seeds: [1]
train: {batch_size: 16, max_steps: 20, max_length: 24, eval_batch_size: 64, max_eval_samples: 48}
"""


def accuracy_by_hand(model, tokenizer, rows: list[dict]) -> float:
    import torch

    enc = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=24, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model.eval()(**enc).logits.argmax(-1).tolist()
    return 100.0 * sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)


@pytest.mark.slow
def test_language_stages_train_by_masked_lm_and_are_swapped_in_to_score(write_suite, tmp_path):
    """Two masked-LM stages train the en and xa language adapters (only them); the MAD-X cell starts from en's,
    trains its task adapter with them frozen, and scores xa with xa's swapped in: its recorded accuracy_xa is what
    the saved task adapter with the xa stage's language state gives by hand, and not what it gives with en's."""
    import torch
    from safetensors.torch import load_file

    from bench import methods
    from bench.methods.madx import language_state, load_language
    from bench.tasks.data import load_rows
    from bench.tasks.registry import registry
    from tests.adapting import build_bundle

    results = tmp_path / "results"
    assert main(["run", "--suite", str(write_suite(SUITE)), "--results", str(results), "--quiet",
                 "--save-adapters"]) == 0
    records = {r["cell"]["label"]: r for r in (json.loads(p.read_text()) for p in (results / "mx").glob("*.json"))}
    assert all(r["status"] == "ok" for r in records.values()), [r["error"] for r in records.values()]
    stages = {label.split(":")[1]: r for label, r in records.items() if label.startswith("stage:")}
    cell = records["madx"]
    assert cell["cell"]["config"]["language_stages"] == {"xa": stages["lang-xa"]["cell"]["id"]}
    language = 2 * closed_forms.bottleneck(closed_forms.H, closed_forms.H // 2) + 2 * (
        closed_forms.linear(closed_forms.H // 2, closed_forms.H // 4) + closed_forms.linear(closed_forms.H // 4,
                                                                                              closed_forms.H // 2))
    assert all(s["params"]["trainable"] == language for s in stages.values())  # masked-LM trains the language parts
    states = {n: results / "mx" / "stages" / stages[n]["cell"]["id"] / "state.safetensors" for n in stages}
    en, xa = (load_file(str(states[n])) for n in ("lang-en", "lang-xa"))
    # what the cell keeps: its task adapter, head and training language's adapters; what it reads beside them: the
    # target language's, as its stage saved them (4-byte elements and a safetensors header)
    assert cell["params"]["stored"] == closed_forms.tiny_trainable("madx", "roberta", 0) + closed_forms.TINY_HEAD \
        + language
    assert cell["params"]["composed"] == language == sum(t.numel() for t in xa.values())
    assert cell["params"]["composed_bytes"] == states["lang-xa"].stat().st_size > 4 * language
    assert all(state[k].any() for state in (en, xa) for k in state if k.endswith("language.up.weight"))  # trained

    task = registry()["synth-xpolarity"]
    bundle = build_bundle("tiny-encoder", task=task, seed=1)
    madx = methods.get("madx")
    adapted = madx.apply(bundle.model, madx.resolve({}, bundle.arch, str),
                         ApplyContext(bundle, TrainConfig(), 1, task=task))
    adapted.load_state(load_file(str(results / "mx" / "adapters" / cell["cell"]["id"] / "state.safetensors")))
    saved = language_state(adapted.model)
    assert all(torch.equal(saved[k], en[k]) for k in en)  # frozen through training, and saved as en's
    rows = load_rows(task, "eval:xa")[:48]
    load_language(adapted.model, xa)
    with_xa = accuracy_by_hand(adapted.model, bundle.tokenizer, rows)
    assert cell["scores"]["metrics"]["accuracy_xa"] == pytest.approx(with_xa)
    load_language(adapted.model, en)
    assert cell["scores"]["metrics"]["accuracy"] == pytest.approx(accuracy_by_hand(
        adapted.model, bundle.tokenizer, load_rows(task, "eval")[:48]))
    logits = [adapted.model(**bundle.tokenizer([rows[0]["sentence"]], return_tensors="pt")).logits]
    load_language(adapted.model, xa)
    logits.append(adapted.model(**bundle.tokenizer([rows[0]["sentence"]], return_tensors="pt")).logits)
    assert not torch.allclose(*logits)  # the swap changes the model


@pytest.mark.parametrize("entry, message", [
    ("{name: lora, language_stages: {xa: lang-xa}}", "swaps language adapters"),
    ("{name: madx, language_stages: {xa: lang-xa}}", "needs `init_from`"),
    ("{name: madx, init_from: lang-en, language_stages: {xa: lang-xq}}", "unknown stage 'lang-xq'"),
    ("{name: madx, init_from: lang-en, language_stages: {xa: lang-lm}}", "by masked-LM"),
])
def test_bad_language_stages_are_refused_before_any_work(write_suite, entry, message):
    from bench.errors import BadInput
    from bench.plan.suite import load_suite

    suite = SUITE.replace("{name: madx, init_from: lang-en, language_stages: {xa: lang-xa}, train: {lr: 5.0e-3}}",
                          entry).replace("stages:\n", "stages:\n  - {name: lang-lm, method: madx, tasks: "
                                         "[synth-xpolarity], train: {max_steps: 20}}\n", 1)
    with pytest.raises(BadInput, match=message):
        load_suite(str(write_suite(suite)))


def test_language_stages_must_be_target_languages(write_suite):
    from bench.errors import BadInput
    from bench.plan import grid
    from bench.plan.suite import load_suite

    suite = load_suite(str(write_suite(SUITE.replace("{xa: lang-xa}", "{en: lang-xa}"))))
    with pytest.raises(BadInput, match=r"task 'synth-xpolarity' is scored in \['xa', 'xb'\]"):
        grid.expand(suite)


def test_the_cell_keeps_the_sizes_of_the_languages_it_swaps_in_not_their_tensors(tmp_path):
    """Adapted.composed after language_swaps: the target language's state's elements and file bytes, as its stage
    saved it; the tensors themselves stay with the swap, which lives only while the cell scores."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save_file

    from bench import methods
    from bench.cell.languages import language_swaps
    from bench.methods.external import STATE_FILE
    from bench.methods.madx import language_state
    from bench.tasks.registry import registry
    from tests.adapting import build_bundle

    task = registry()["synth-xpolarity"]
    bundle = build_bundle("tiny-encoder", task=task, seed=1)
    madx = methods.get("madx")
    adapted = madx.apply(bundle.model, madx.resolve({}, bundle.arch, str), ApplyContext(bundle, TrainConfig(), 1,
                                                                                        task=task))
    xa = {name: torch.randn_like(t) for name, t in language_state(adapted.model).items()}
    (tmp_path / "lang-xa").mkdir()
    save_file(xa, str(tmp_path / "lang-xa" / STATE_FILE))
    cell = SimpleNamespace(language_stages={"xa": "lang-xa"}, init_dir=str(tmp_path / "lang-en"))
    swap = language_swaps(cell, adapted, "cpu")
    assert adapted.composed == {"composed": sum(t.numel() for t in xa.values()),
                                "composed_bytes": (tmp_path / "lang-xa" / STATE_FILE).stat().st_size}
    swap("xa")
    assert all(torch.equal(language_state(adapted.model)[name], t) for name, t in xa.items())
