"""Parity of AdapterFusion (bench/methods/fusion.py) with AdapterHub `adapters` 1.3.0's Fuse under its default
DynamicAdapterFusionConfig (fixture: scripts/parity/gen_adapterhub_fusion.py, which says how it is made).

Our tiny RoBERTa is rebuilt from the base fixture; the two task adapters are handed to our method as the states
two adapter-pfeiffer stage cells would have saved (our names for them, `...output.dense.adapter.*`), and the
reference's fusion weights and head are loaded through the fixture's name map. Logits, final hidden states and loss
must match, and the gradients of the trained parameters under loss + AdapterHub's fusion regulariser (ours adds the
regulariser's gradient after backward) and the parameters after the reference's SGD steps, to 1e-5.
"""

from __future__ import annotations

import torch

from bench import methods
from bench.config import TrainConfig
from bench.layers.fusion import REGULARIZATION, VALUE_OFF_DIAGONAL, Fusion
from bench.methods.base import ApplyContext
from bench.models import Bundle, ModelSpec
from tests.parity import assert_matches, load, relative_difference
from tests.test_parity_bottleneck import DEVICE, base_model, run

CASE = "adapterhub-fusion-roberta"


def ours():
    """Our adapter-fusion over the fixture's two adapters (given as adapter-pfeiffer stage states), its fusion and
    head loaded from the reference's weights as used; returns (model, adapted, inputs, tensors, meta, base)."""
    tensors, meta = load(CASE)
    model, inputs, base = base_model(meta["arch"])
    states = [{} for _ in meta["adapters"]]
    for key, value in tensors.items():
        if key.startswith("adapter."):
            name = meta["name_map"][key.removeprefix("adapter.")]
            site, rest = name.split(".adapter_fusion.adapters.")
            index, leaf = rest.split(".", 1)
            states[int(index)][f"{site}.adapter.{leaf}"] = value.to(DEVICE)  # as a pfeiffer stage saves it
    bundle = Bundle(ModelSpec("parity", "fixture model", "tiny", meta["arch"], meta["arch"]), model, None,
                    "classifier", 2)
    method = methods.get("adapter-fusion")
    config = method.resolve({"adapters": list(meta["adapters"])}, meta["arch"], str)
    adapted = method.apply(model, config, ApplyContext(bundle, TrainConfig(), 1, device=DEVICE, stage_states=states))
    used = {meta["name_map"][k.split(".", 1)[1]]: v.to(DEVICE) for k, v in tensors.items()
            if k.startswith(("used.", "head."))}
    assert not model.load_state_dict(used, strict=False).unexpected_keys
    return model, adapted, inputs, tensors, meta, base


def regularizer(model) -> torch.Tensor:
    """0.01 · Σ_layers ||I − W_v||², computed here as AdapterHub does (the fixture holds its value)."""
    return sum(REGULARIZATION * (torch.eye(m.value.weight.shape[0], device=m.value.weight.device)
                                 - m.value.weight).pow(2).sum() for m in model.modules() if isinstance(m, Fusion))


def test_outputs_grads_and_steps_match_adapterhub_fuse():
    model, adapted, inputs, tensors, meta, base = ours()
    assert relative_difference(tensors["logits"], base["logits"]) > 1e-1  # not vacuous: the fusion moves the logits
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    reverse = {mine: theirs for theirs, mine in meta["name_map"].items()}
    differences = {}
    logits, hidden, loss = run(model, inputs)
    differences["logits"] = assert_matches("logits", logits, tensors["logits"])
    differences["hidden"] = assert_matches("hidden", hidden, tensors["hidden"])
    differences["loss"] = assert_matches("loss", loss, tensors["loss"])
    differences["regularizer"] = assert_matches("regularizer", regularizer(model), tensors["regularizer"])

    def backward(step_loss):
        step_loss.backward()
        for hook in adapted.after_backward:  # the regulariser's gradient, as training adds it
            hook(0)

    backward(loss)
    # the key's bias adds q·b_k to every adapter's score alike, which the softmax takes away: its gradient is zero
    # but for rounding (1e-8 here and there), so it is held to that, not compared relatively
    for n in [n for n in trained if n.endswith("key.bias")]:
        assert trained[n].grad.abs().max() < 1e-7 and tensors[f"grad.{reverse[n]}"].abs().max() < 1e-7
    differences["grads"] = max(assert_matches(f"grad {n}", p.grad, tensors[f"grad.{reverse[n]}"])
                               for n, p in trained.items() if not n.endswith("key.bias"))
    optimizer = torch.optim.SGD(trained.values(), lr=meta["optimizer"]["lr"])
    losses = []
    for _ in range(meta["optimizer"]["steps"]):
        optimizer.zero_grad()
        step_loss = run(model, inputs)[2]
        backward(step_loss)
        optimizer.step()
        losses.append(step_loss.detach())
    differences["step losses"] = assert_matches("step losses", torch.stack(losses), tensors["step_losses"])
    differences["stepped"] = max(assert_matches(f"stepped {n}", p, tensors[f"stepped.{reverse[n]}"])
                                 for n, p in trained.items())
    print(f"\nparity adapter-fusion ({meta['arch']}) vs adapters {meta['pins']['adapters']}: largest relative "
          f"difference {max(differences.values()):.2e} (" + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
          + ")")


def test_trained_parameters_and_count_are_the_reference_ones():
    model, _, _, _, meta, _ = ours()
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert set(trained) == {meta["name_map"][n] for n in meta["trained"]}
    assert sum(trained.values()) == meta["trained_count"]
    d, layers = 32, 2  # the fixture's hidden size and layers: query and key d×d + d, value d×d
    assert meta["fusion_count"] == layers * (3 * d * d + 2 * d)


def test_fusion_starts_as_the_reference_dynamic_config_starts():
    """Value: the identity with 1e-6 elsewhere, no bias; query and key N(0, 0.02²) weights and zero biases."""
    tensors, meta = load(CASE)
    assert meta["fusion_config"]["value"] and meta["fusion_config"]["value_initialized"]
    assert meta["fusion_config"]["value_before_softmax"] and not meta["fusion_config"]["temperature"]
    mine = Fusion(32)
    for key, init in tensors.items():
        if key.startswith("init.") and key.endswith("value.weight"):
            torch.testing.assert_close(mine.value.weight.detach(), init, rtol=0, atol=0)
            assert init[0, 1] == torch.tensor(VALUE_OFF_DIAGONAL) and mine.value.bias is None
        elif key.startswith("init.") and key.endswith(".bias"):
            assert not init.any()
        elif key.startswith("init."):  # query and key weights: N(0, 0.02²) on both sides
            assert 0.01 < float(init.std()) < 0.03 and 0.01 < float(mine.query.weight.detach().std()) < 0.03
