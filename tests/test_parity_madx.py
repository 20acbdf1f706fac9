"""Parity of MAD-X's stacked adapters (bench/methods/madx.py) with AdapterHub `adapters` 1.3.0: a language adapter
SeqBnInvConfig(reduction_factor=2) with its invertible adapter, a task adapter SeqBnConfig(), Stack(lang, task)
(fixture: scripts/parity/gen_adapterhub_madx.py, on the tiny RoBERTa of the bottleneck fixtures). Logits, final
hidden states, loss and the trained tensors' gradients must match to 1e-5, and swapping another language's
adapters in (`load_language`) must give the reference's Stack(other, task). Closed-form counts of the language
and task adapters on XLM-R base are checked against ours and against the reference's own count."""

from __future__ import annotations

import pytest
import torch

from bench.methods.madx import language_state, load_language
from tests import closed_forms
from tests.parity import assert_matches, load, relative_difference
from tests.test_parity_bottleneck import DEVICE, load_reference, ours, run


def language_tensors(tensors: dict, meta: dict, language: str) -> dict:
    return {meta["name_map"][n]: tensors[f"used.{n}"].to(DEVICE) for n in meta["languages"][language]}


def test_stacked_forward_and_grads_match_adapterhub():
    model, inputs, tensors, meta, base = ours("madx-roberta")
    assert relative_difference(tensors["logits"], base["logits"]) > 1e-1  # not vacuous
    task = {k: v for k, v in tensors.items() if k.startswith("used.") and ".other." not in k}
    load_reference(model, task, meta, "used.")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trained) == {meta["name_map"][n] for n in meta["reference_trained"]}
    reverse = {mine: theirs for theirs, mine in meta["name_map"].items() if theirs in meta["reference_trained"]}
    logits, hidden, loss = run(model, inputs)
    differences = {"logits": assert_matches("logits", logits, tensors["logits"]),
                   "hidden": assert_matches("hidden", hidden, tensors["hidden"]),
                   "loss": assert_matches("loss", loss, tensors["loss"])}
    loss.backward()
    differences["grads"] = max(assert_matches(f"grad {n}", p.grad, tensors[f"grad.{reverse[n]}"])
                               for n, p in trained.items())
    print(f"\nparity madx (roberta) vs adapters {meta['pins']['adapters']}: largest relative difference "
          f"{max(differences.values()):.2e} (" + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()) + ")")


def test_swapping_the_language_adapters_gives_the_reference_s_other_stack():
    model, inputs, tensors, meta, _ = ours("madx-roberta")
    task = {k: v for k, v in tensors.items() if k.startswith("used.") and ".other." not in k}
    load_reference(model, task, meta, "used.")
    own = {k: v.clone() for k, v in language_state(model).items()}
    load_language(model, language_tensors(tensors, meta, "other"))
    with torch.no_grad():
        swapped = assert_matches("logits, other language", run(model, inputs)[0], tensors["logits_other"])
        assert relative_difference(tensors["logits_other"], tensors["logits"]) > 1e-2  # the language matters
        load_language(model, own)
        assert_matches("logits, back to the first language", run(model, inputs)[0], tensors["logits"])
    with pytest.raises(ValueError, match="missing"):
        load_language(model, dict(list(own.items())[1:]))
    print(f"\nparity madx language swap: {swapped:.1e} from Stack(other, task)")


def test_closed_form_counts_on_xlm_r_base(tiny_bundle):
    """MAD-X on XLM-R base (d = 768, 12 layers): the language adapter d -> d/2 -> d per layer plus the NICE block's
    two subnets (384 -> 192 -> 384 each), the task adapter d -> d/16 -> d per layer. The reference counts the same
    on the same config; ours, built on the meta device, trains exactly the task adapter (and the head)."""
    from tests.adapting import adapt

    _, meta = load("adapterhub-madx-roberta")
    d, layers, half = 768, 12, 384
    language = layers * closed_forms.bottleneck(d, d // 2)
    invertible = 2 * (closed_forms.linear(half, half // 2) + closed_forms.linear(half // 2, half))
    task = layers * closed_forms.bottleneck(d, d // 16)
    assert (language, invertible, task) == (7_091_712, 296_064, 894_528)
    assert meta["xlmr_base"]["counts"] == {"lang": language + invertible, "task": task, "invertible": invertible}
    bundle, adapted = adapt("xlm-roberta-base", "madx", meta=True)
    counts = adapted.params()
    head = closed_forms.roberta_classification_head(d)
    assert counts["trainable"] == task + head
    assert sum(v.numel() for v in language_state(adapted.model).values()) == language + invertible
