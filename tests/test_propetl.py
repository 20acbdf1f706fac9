"""ProPETL (bench/methods/propetl.py): closed-form counts, the base model's outputs at init, binary masks
that keep their share and learn through the straight-through estimator, and a stored state of the
prototype plus boolean masks that restores the trained model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from bench import methods
from bench.cell.measure import stored_size
from bench.cell.train import optimizer_for
from bench.config import TrainConfig
from bench.layers.masks import MaskScores, kept
from bench.methods.base import ApplyContext
from tests.adapting import adapt
from tests.closed_forms import TINY_HEAD, bottleneck, lora, roberta_classification_head, tiny_propetl
from tests.test_methods import fresh, logits

ARCH = {"tiny-encoder": "roberta", "tiny-t5": "t5", "tiny-gpt2": "gpt2", "tiny-llama": "llama"}


def score_modules(model) -> dict[str, MaskScores]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskScores)}


def train_steps(adapted, batch, steps: int) -> None:
    optimizer = optimizer_for(adapted.model, TrainConfig(lr=1e-3, weight_decay=0.1))
    adapted.model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        adapted.model(**batch).loss.backward()
        optimizer.step()


@pytest.mark.parametrize("model_name", list(ARCH))
@pytest.mark.parametrize("method", ["propetl-adapter", "propetl-lora"])
def test_counts_are_the_prototype_and_a_score_per_mask_entry(method, model_name):
    bundle, adapted = adapt(model_name, method)
    prototype, masks = tiny_propetl(method, ARCH[model_name])
    scores = score_modules(adapted.model)
    assert sorted(m.scores.numel() for m in scores.values()) == sorted(masks)
    shared = sum(p.numel() for n, p in adapted.model.named_parameters() if n.startswith("propetl_"))
    assert shared == prototype
    head = TINY_HEAD if bundle.head_modules else 0
    assert adapted.params()["trainable"] == prototype + sum(masks) + head


@pytest.mark.parametrize("method,prototype", [("propetl-adapter", bottleneck(768, 64)),
                                              ("propetl-lora", lora([(768, 768)] * 2, r=32))])
def test_roberta_base_counts_as_the_paper_counts_them(method, prototype, tiny_bundle):
    """On the meta device: 12 layers' masks of 2·768·64 bits (adapter, bottleneck 64) or 2·32·1536 bits
    (LoRA on q and v, r 32); the paper counts storage as prototype + bits/32 floats."""
    bundle = tiny_bundle("roberta-base", meta=True)
    m = methods.get(method)
    with torch.device("meta"):
        adapted = m.apply(bundle.model, m.resolve({}, "roberta", str), ApplyContext(bundle, TrainConfig(), 10))
    head = roberta_classification_head(768)
    bits = 12 * 98_304
    assert adapted.params()["trainable"] - head == prototype + bits
    state = adapted.state_to_store()
    assert sum(t.numel() for t in state.values() if t.is_floating_point()) == prototype + head
    assert sum(t.numel() for t in state.values() if t.dtype == torch.bool) == bits
    assert prototype + bits // 32 == {"propetl-adapter": 136_000, "propetl-lora": 135_168}[method]


@pytest.mark.parametrize("model_name", list(ARCH))
@pytest.mark.parametrize("method", ["propetl-adapter", "propetl-lora"])
def test_outputs_equal_the_base_model_at_init(method, model_name, tiny_bundle):
    bundle, adapted = adapt(model_name, method)
    base = tiny_bundle(model_name).model.eval()  # what adapt built, without the method
    ids = torch.tensor([[1, 5, 6, 7, 8, 2]])
    inputs = {"input_ids": ids}
    if bundle.spec.kind == "encoder-decoder":
        inputs["decoder_input_ids"] = ids
    with torch.no_grad():
        assert torch.equal(adapted.model.eval()(**inputs).logits, base(**inputs).logits)


def test_straight_through_estimator_passes_the_mask_gradient_to_the_scores_magnitude():
    torch.manual_seed(0)
    scores = MaskScores(torch.Size([6, 10]), keep_ratio=0.3, bound=1.0)
    weight = torch.randn(6, 10)
    (scores() * weight).sum().backward()
    torch.testing.assert_close(scores.scores.grad, weight * scores.scores.detach().sign())
    mask = scores()
    assert torch.equal(mask, scores.binary().float()) and int(mask.sum()) == kept(60, 0.3) == 18
    top = scores.scores.detach().abs().flatten().topk(18).indices
    assert scores.binary().flatten()[top].all()


@pytest.mark.parametrize("model_name,method", [("tiny-encoder", "propetl-adapter"), ("tiny-t5", "propetl-adapter"),
                                               ("tiny-llama", "propetl-lora")])
def test_masks_are_binary_keep_their_share_and_learn(model_name, method):
    torch.manual_seed(0)
    _, adapted, batch = fresh(model_name, method)
    keep = methods.get(method).defaults["keep_ratio"]
    scores = score_modules(adapted.model)
    before = {n: m.binary() for n, m in scores.items()}
    train_steps(adapted, batch, 4)  # the up projection (B) starts at zero: masks get gradients from step 2
    assert all(m.scores.grad is not None and m.scores.grad.abs().sum() > 0 for m in scores.values())
    changed = 0
    for name, m in scores.items():
        mask = m()
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert int(mask.sum()) == kept(mask.numel(), keep)
        changed += int((m.binary() != before[name]).sum())
    assert changed > 0
    # each layer selects its own sub-network of the shared matrix
    by_matrix: dict[tuple, list[torch.Tensor]] = {}
    for name, m in scores.items():
        by_matrix.setdefault((name.rsplit(".", 1)[-1], tuple(m.scores.shape)), []).append(m.binary())
    for masks in by_matrix.values():
        assert len(masks) > 1 and all(not torch.equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1:])


@pytest.mark.parametrize("model_name,method", [("tiny-encoder", "propetl-adapter"), ("tiny-t5", "propetl-lora"),
                                               ("tiny-gpt2", "propetl-lora")])
def test_stored_state_is_the_prototype_and_boolean_masks_and_restores_the_model(model_name, method):
    torch.manual_seed(0)
    bundle, adapted, batch = fresh(model_name, method)
    train_steps(adapted, batch, 3)
    trained = logits(adapted.model, batch)
    state = {k: v.clone() for k, v in adapted.state_to_store().items()}
    assert not any(k.endswith(".scores") for k in state)
    prototype, masks = tiny_propetl(method, ARCH[model_name])
    head = TINY_HEAD if bundle.head_modules else 0
    bools = [t for t in state.values() if t.dtype == torch.bool]
    assert sorted(t.numel() for t in bools) == sorted(masks)
    assert all(int(t.sum()) == kept(t.numel(), methods.get(method).defaults["keep_ratio"]) for t in bools)

    size, raw = stored_size(state), save(state)
    header = int.from_bytes(raw[:8], "little")  # safetensors: header length, JSON header, then the data
    assert size["stored"] == prototype + head  # floating tensors only: masks are not parameters
    assert size["stored_bytes"] == len(raw) == 8 + header + 4 * (prototype + head) + sum(masks)

    torch.manual_seed(1)  # other scores, other masks, another prototype init
    _, again, _ = fresh(model_name, method)
    assert not torch.equal(logits(again.model, batch), trained)
    again.load_state(state)
    torch.testing.assert_close(logits(again.model, batch), trained, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(m.binary(), state[f"{n}.mask"]) for n, m in score_modules(again.model).items())
