"""AdapterFusion (bench/methods/fusion.py) beyond its parity: what trains and what stays frozen, its closed-form
count on RoBERTa-base, the regulariser's gradient, the suite's checks of the stages it names, and a tiny suite end to
end (two adapter-pfeiffer stages saved, then fused)."""

from __future__ import annotations

import gc
import json
import tempfile
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench import methods
from bench.cell.measure import stored_size
from bench.cli import main
from bench.config import TrainConfig
from bench.layers.fusion import REGULARIZATION, Fusion
from bench.methods.base import ApplyContext, composed_size
from bench.methods.external import STATE_FILE
from bench.plan import grid
from bench.plan.suite import load_suite
from tests import closed_forms
from tests.adapting import build_bundle, token_batch
from tests.refusals import refused


def fusion_count(hidden: int, layers: int) -> int:
    """Per layer: query and key d×d with bias, value d×d without (AdapterHub's dynamic fusion)."""
    return layers * (2 * closed_forms.linear(hidden, hidden) + closed_forms.linear(hidden, hidden, bias=False))


def pfeiffer_state(seed: int) -> dict[str, torch.Tensor]:
    """What an adapter-pfeiffer stage saves, its adapter weights drawn (not zero) from `seed`."""
    bundle = build_bundle()
    method = methods.get("adapter-pfeiffer")
    adapted = method.apply(bundle.model, method.resolve({}, "roberta", str), ApplyContext(bundle, TrainConfig(), 1))
    torch.manual_seed(seed)  # after the bundle, which seeds its own draws
    with torch.no_grad():
        for name, p in adapted.model.named_parameters():
            if ".adapter." in name:
                p.normal_(0, 0.05)  # large ones would saturate the fusion softmax (no gradient)
    return adapted.state_to_store()


def fused(states, overrides=None, meta=False):
    bundle = build_bundle(meta=meta)
    method = methods.get("adapter-fusion")
    config = method.resolve({"adapters": [f"stage-{i}" for i in range(len(states) or 2)], **(overrides or {})},
                            "roberta", str)
    return bundle, method.apply(bundle.model, config, ApplyContext(bundle, TrainConfig(), 1, stage_states=states))


def test_adapters_load_frozen_and_only_the_fusion_and_head_train():
    states = [pfeiffer_state(1), pfeiffer_state(2)]
    assert not any(torch.equal(states[0][k], states[1][k]) for k in states[0] if ".adapter." in k)
    bundle, adapted = fused(states)
    parameters = dict(adapted.model.named_parameters())
    for i, state in enumerate(states):
        for key, value in state.items():
            if ".adapter." in key:
                mine = parameters[key.replace(".adapter.", f".adapter_fusion.adapters.{i}.")]
                assert torch.equal(mine, value) and not mine.requires_grad
    trainable = {n for n, p in parameters.items() if p.requires_grad}
    assert all(".fusion." in n or n.startswith("classifier.") for n in trainable)
    head = closed_forms.TINY_HEAD
    assert adapted.params()["trainable"] - head == fusion_count(64, 2)
    # a step: gradients reach every trainable tensor, and no frozen one (the adapters included) moves
    before = {n: p.detach().clone() for n, p in parameters.items()}
    adapted.model.train()
    adapted.model(**token_batch(4, 12)).loss.backward()
    for hook in adapted.after_backward:
        hook(0)
    assert all(parameters[n].grad is not None for n in trainable)
    torch.optim.SGD([parameters[n] for n in trainable], lr=0.1).step()
    for name, p in parameters.items():
        assert torch.equal(p, before[name]) == (name not in trainable), name


@pytest.mark.parametrize("model", ["roberta-base", "xlm-roberta-base"])
def test_count_is_the_closed_form(model):
    """RoBERTa-base and XLM-R base (hidden 768, 12 layers; XLM-R's 250,002-word vocabulary is frozen):
    12 · (3 · 768² + 2 · 768) = 21,252,096 beside the head."""
    bundle = build_bundle(model, meta=True)
    method = methods.get("adapter-fusion")
    with torch.device("meta"):
        adapted = method.apply(bundle.model, method.resolve({"adapters": ["a", "b"]}, "roberta", str),
                               ApplyContext(bundle, TrainConfig(), 1))
    head = closed_forms.roberta_classification_head(768)
    assert adapted.params()["trainable"] - head == fusion_count(768, 12) == 12 * (3 * 768 ** 2 + 2 * 768) \
        == 21_252_096


def test_the_regulariser_gradient_is_that_of_its_loss_term():
    """after_backward adds d/dW_v of 0.01 · ||I − W_v||², as autograd differentiates the term."""
    torch.manual_seed(0)
    fusion = Fusion(8)
    with torch.no_grad():
        fusion.value.weight.add_(0.3 * torch.randn(8, 8))
    fusion.value.weight.grad = torch.zeros(8, 8)
    fusion.regularization_grad()
    weight = fusion.value.weight.detach().clone().requires_grad_(True)
    (REGULARIZATION * (torch.eye(8) - weight).pow(2).sum()).backward()
    torch.testing.assert_close(fusion.value.weight.grad, weight.grad)
    _, off = fused([pfeiffer_state(1), pfeiffer_state(2)], {"regularization": False})
    assert not off.after_backward


def adapter_file_bytes(states: list[dict[str, torch.Tensor]]) -> int:
    """Each state's adapter tensors (its head left out) written as their own safetensors file: the bytes."""
    from safetensors.torch import save_file

    total = 0
    for i, state in enumerate(states):
        path = Path(tempfile.mkdtemp()) / f"adapter-{i}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("classifier.")}, str(path))
        total += path.stat().st_size
    return total


def test_what_it_keeps_beside_its_state_is_the_task_adapters_in_closed_form():
    """params.composed: the two Pfeiffer adapters it reads, one bottleneck (64 → 4 → 64) in each of the 2 layers,
    without the heads their stages trained (which it never reads); composed_bytes: each written as its own file."""
    states = [pfeiffer_state(1), pfeiffer_state(2)]
    _, adapted = fused(states)
    composed = adapted.composed
    assert composed["composed"] == 2 * closed_forms.L * closed_forms.bottleneck(64, 64 // 16) == 2 * 2 * 580
    assert composed["composed_bytes"] == adapter_file_bytes(states)
    assert stored_size(adapted.state_to_store())["stored"] == fusion_count(64, 2) + closed_forms.TINY_HEAD
    assert composed_size([]) == {"composed": None, "composed_bytes": None}  # a method that reads none


def test_the_fused_model_holds_no_second_copy_of_the_task_adapters():
    """The adapters' tensors are copied into the fusion's modules; the saved states they came from are freed once the
    cell lets go of them (Adapted.composed keeps only their sizes), so the cell never holds them twice, outside
    what its memory prediction counts."""
    states = [pfeiffer_state(1), pfeiffer_state(2)]
    loaded = [weakref.ref(t) for state in states for name, t in state.items() if ".adapter." in name]
    _, adapted = fused(states)
    del states
    gc.collect()
    assert loaded and all(ref() is None for ref in loaded)
    assert all(isinstance(size, int) for size in adapted.composed.values())


def test_without_its_saved_adapters_it_is_unsupported_with_the_reason():
    with pytest.raises(Exception, match="2 adapters and was given 1"):
        fused([pfeiffer_state(1)], {"adapters": ["a", "b"]})


FUSED = """\
name: fused
methods:
  - {name: adapter-fusion, overrides: {adapters: [ad-pol, ad-int]}}
models: [tiny-encoder]
stages:
  - {name: ad-pol, method: adapter-pfeiffer, tasks: [synth-polarity], train: {max_steps: 2, batch_size: 4,
     max_length: 32, max_train_samples: 16}}
  - {name: ad-int, method: adapter-pfeiffer, tasks: [synth-intensity], train: {max_steps: 2, batch_size: 4,
     max_length: 32, max_train_samples: 16}}
tasks: [synth-polarity]
seeds: [1]
train: {batch_size: 4, max_steps: 2, max_length: 32, eval_batch_size: 32, max_eval_samples: 16, max_train_samples: 16}
"""


@pytest.mark.parametrize("change,message", [
    (lambda t: t.replace("adapters: [ad-pol, ad-int]", "adapters: [ad-pol, ad-nope]"), "unknown stage 'ad-nope'"),
    (lambda t: t.replace("{name: ad-int, method: adapter-pfeiffer,", "{name: ad-int, method: lora,"),
     "takes stages of adapter-pfeiffer"),
    (lambda t: t.replace("{adapters: [ad-pol, ad-int]}", "{adapters: [ad-pol, ad-int], reduction_factor: 8}"),
     "the settings must agree"),
    (lambda t: t.replace("{name: ad-int, method: adapter-pfeiffer,",
                         "{name: ad-int, method: {name: adapter-pfeiffer, overrides: {after_residual: false}},"),
     "sets after_residual"),
])
def test_bad_fused_stages_are_one_error_with_the_line(write_suite, change, message):
    refused(write_suite(change(FUSED)), message)


def test_the_fused_stages_ids_are_in_the_cells_config(write_suite):
    cells = grid.expand(load_suite(str(write_suite(FUSED))))
    stages = {c.stage: c.id for c in cells if c.stage}
    (cell,) = [c for c in cells if not c.stage]
    assert cell.stage_refs == (stages["ad-pol"], stages["ad-int"])
    assert cell.method_config["adapters"] == [stages["ad-pol"], stages["ad-int"]]
    other = grid.expand(load_suite(str(write_suite(FUSED.replace("max_steps: 2, batch_size: 4,\n     max_length: 32, "
                                                                  "max_train_samples: 16}}\n  - {name: ad-int",
                                                                  "max_steps: 3, batch_size: 4,\n     max_length: 32, "
                                                                  "max_train_samples: 16}}\n  - {name: ad-int"),
                                                     "other.yaml"))))
    assert cell.id not in {c.id for c in other}  # a stage's settings move the fusion cell's id


@pytest.mark.slow
def test_fusion_over_two_saved_adapters_end_to_end(tmp_path, write_suite):
    suite, results = write_suite(FUSED), tmp_path / "results"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet", "--threads", "1"]) == 0
    records = [json.loads(p.read_text()) for p in (results / "fused").glob("*.json")]
    assert sorted(r["status"] for r in records) == ["ok"] * 3
    (cell,) = [r for r in records if not r["cell"].get("stage")]
    assert cell["params"]["trainable"] - closed_forms.TINY_HEAD == fusion_count(64, 2)
    assert cell["params"]["stored"] == fusion_count(64, 2) + closed_forms.TINY_HEAD
    assert cell["params"]["composed"] == 2 * closed_forms.L * closed_forms.bottleneck(64, 64 // 16)
    saved = [load_file(str(results / "fused" / "stages" / ref / STATE_FILE)) for ref in cell["cell"]["stage_refs"]]
    assert cell["params"]["composed_bytes"] == adapter_file_bytes(saved)
    assert cell["scores"]["metrics"]["accuracy"] is not None and cell["train"]["steps"] == 2
