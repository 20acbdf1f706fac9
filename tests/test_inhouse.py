"""The in-house mechanisms against independent computations."""

import copy

import peft
import pytest
import torch
import transformers
from packaging.version import Version

from bench import methods, tiny
from bench.cell.batching import collate
from bench.config import TrainConfig
from bench.errors import BadInput
from bench.layers.attention_prefix import PrefixBank, add_prefix, attention_modules, implementation_of, set_attention
from bench.layers.phm import PHMLinear, PHMRule
from bench.methods.base import ApplyContext
from bench.methods.fisher import top_share_masks
from bench.models import REGISTRY
from tests.adapting import adapt, build_bundle, calibration_of
from tests.closed_forms import attention_module_counts


@pytest.mark.parametrize("name,task_type", [("tiny-encoder", "classification"), ("tiny-gpt2", "generation"),
                                            ("tiny-llama", "generation")])
def test_inhouse_prefix_equals_peft_prefix_tuning(name, task_type, tiny_bundle):
    """Same prefix vectors -> same outputs as peft's prefix tuning, once positions are matched: peft
    passes prefixes as past keys/values, which shift token positions by the prefix length; ours are
    positionless, so here the shifted positions are given explicitly."""
    bundle = tiny_bundle(name, task_type)
    base = bundle.model.eval()
    ours = copy.deepcopy(base)
    theirs = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type=bundle.peft_task_type,
                                                                num_virtual_tokens=4)).eval()
    batch = collate([{"input_ids": [1, 5, 6, 7, 8]}, {"input_ids": [1, 9, 10]}], 0)
    try:
        with torch.no_grad():
            theirs(**batch)
    except ValueError as e:  # nothing to compare with; this fails once peft can prefix encoders again
        assert name == "tiny-encoder" and "past key values" in str(e)
        assert Version(transformers.__version__) >= Version("5.24")
        return
    table = theirs.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        table.normal_()
        add_prefix(ours, bundle.arch, length=4).prefix.copy_(table)
    mask = batch["attention_mask"]
    if name == "tiny-encoder":  # RoBERTa numbers positions from padding_idx + 1, past length included
        positions = (torch.cumsum(mask, 1) + 4) * mask
    else:
        positions = torch.arange(4, 4 + mask.shape[1])[None].expand_as(mask)
    with torch.no_grad():
        expected = theirs(**batch).logits
        got = ours(**batch, position_ids=positions).logits
    if got.dim() == 3:  # compare real tokens only
        expected, got = expected[mask.bool()], got[mask.bool()]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,task_type", [("tiny-encoder", "classification"), ("tiny-t5", "generation"),
                                            ("tiny-gpt2", "generation"), ("tiny-llama", "generation")])
@pytest.mark.parametrize("attention", ["auto", "eager"])
def test_prefix_tuning_reaches_every_attention(name, task_type, attention):
    """Every attention module (encoder self, decoder self, decoder cross) reads the prefix: each one's
    output changes when the prefix changes. The model's implementation, wrapped, is still the one named."""
    _, adapted = adapt(name, "prefix-tuning", attention=attention)
    model = adapted.model.eval()
    configs = {m.config._attn_implementation for m in model.modules() if isinstance(m, transformers.PreTrainedModel)}
    # every stack's too (T5's encoder and decoder): before transformers 5.20 only set_attention reaches them,
    # so this fails there without it (checked with 5.17); newer versions set them either way
    assert all(name.startswith("bench_prefix_") for name in configs)
    assert implementation_of(model) == {"auto": "sdpa", "eager": "eager"}[attention]
    modules = attention_modules(model, REGISTRY[name].arch)
    kinds = {"cross": sum(".EncDecAttention" in n for n, _, _ in modules)}
    kinds["self"] = len(modules) - kinds["cross"]
    assert kinds == attention_module_counts(REGISTRY[name].arch, tiny.DEPTH)
    outputs = {}
    for module_name, module, _ in modules:
        module.register_forward_hook(lambda m, a, out, n=module_name: outputs.__setitem__(n, out[0].clone()))
    batch = collate([{"input_ids": [1, 5, 6, 7], "labels": [7, 8, 2]}], 0)
    if task_type == "classification" or name != "tiny-t5":
        batch.pop("labels")
    with torch.no_grad():
        model(**batch)
        before = dict(outputs)
        model.bench_prefix_bank.mlp[2].bias.add_(1.0)  # a different prefix in every module
        model(**batch)
    assert set(outputs) == {n for n, _, _ in modules}
    unchanged = [n for n in outputs if torch.allclose(outputs[n], before[n])]
    assert not unchanged, f"attention modules that ignore the prefix: {unchanged}"


def test_a_prefix_the_attention_never_reads_is_an_error_not_a_silent_no_op():
    """An attention computed outside the attention interface (T5 before transformers 5.15) must not silently
    ignore its prefix. (On a GPU machine with transformers 5.17, MAM and UniPELT on T5 left prefix parameters
    without gradients: there `set_attn_implementation` did not reach T5's stacks, see set_attention.)"""
    from bench.errors import Unsupported

    _, adapted = adapt("tiny-t5", "prefix-tuning")
    model = adapted.model.eval()
    batch = collate([{"input_ids": [1, 5, 6], "labels": [7, 8, 2]}], 0)
    set_attention(model, "eager")  # as if the modeling code bypassed the registered wrapper
    with pytest.raises(Unsupported, match="did not call the attention interface"):
        model(**batch)


def test_prefix_leaves_a_model_unchanged_where_it_has_none(tiny_bundle):
    bundle = tiny_bundle("tiny-t5")
    model = bundle.model.eval()
    batch = collate([{"input_ids": [1, 5, 6], "labels": [7, 8, 2]}], 0)
    with torch.no_grad():
        before = model(**batch).logits
        bank = add_prefix(model, "t5", length=3)
        bank.prefix.zero_()  # zero keys and values still take attention mass: outputs must change...
        changed = model(**batch).logits
        for module in model.modules():
            if hasattr(module, "bench_prefix"):
                object.__delattr__(module, "bench_prefix")  # ...and without sites they must not
        after = model(**batch).logits
    assert not torch.allclose(before, changed)
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("mid_dim", [0, 16])
def test_each_module_reads_its_own_block_of_the_folded_prefix(mid_dim):
    bank = PrefixBank(n_modules=5, length=3, kv_heads=2, head_dim=4, hidden=8, mid_dim=mid_dim).double()
    table = bank.folded().view(3, 5, 2, 2, 4)  # [length, module, key|value, kv_heads, head_dim]
    for index in range(5):
        keys, values = bank.keys_values(index)
        torch.testing.assert_close(keys, table[:, index, 0].transpose(0, 1), rtol=0, atol=1e-12)
        torch.testing.assert_close(values, table[:, index, 1].transpose(0, 1), rtol=0, atol=1e-12)


def test_phm_weight_is_a_sum_of_kronecker_products():
    rule = PHMRule(4)
    layer = PHMLinear(8, 12, rule, rank=1)
    expected = sum(torch.kron(rule.a[i], layer.s[i] @ layer.t[i]) for i in range(4))
    torch.testing.assert_close(layer.weight(), expected)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x @ expected + layer.bias)


def test_top_share_masks_keep_the_largest_entries_across_tensors():
    scores = [torch.tensor([[0.1, 0.9], [0.3, 0.0]]), torch.tensor([0.8, 0.2, 0.7, 0.4])]
    masks = top_share_masks(scores, 0.375)  # 3 of 8 entries: 0.9, 0.8, 0.7
    assert masks[0].tolist() == [[False, True], [False, False]]
    assert masks[1].tolist() == [True, False, True, False]


def _perturbed(name, method):
    _, adapted = adapt(name, method)
    with torch.no_grad():  # move the zero-initialised parts, so every gate and branch matters
        for p in adapted.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return adapted.model.eval()


@pytest.mark.parametrize("method", ["unipelt", "mam-adapter", "compacter", "adapter-parallel", "adapter-pfeiffer"])
def test_inhouse_methods_keep_decoders_causal(method):
    model = _perturbed("tiny-gpt2", method)
    a, b = torch.tensor([[1, 5, 6, 7, 8, 9]]), torch.tensor([[1, 5, 6, 7, 8, 30]])
    with torch.no_grad():
        la, lb = model(input_ids=a).logits, model(input_ids=b).logits
    torch.testing.assert_close(la[:, :-1], lb[:, :-1])  # no earlier position sees the last token


@pytest.mark.parametrize("method", ["unipelt", "mam-adapter"])
def test_inhouse_methods_ignore_padding(method):
    model = _perturbed("tiny-encoder", method)
    alone = collate([{"input_ids": [1, 5, 6, 2]}], 0)
    padded = collate([{"input_ids": [1, 5, 6, 2]}, {"input_ids": [1, 5, 6, 7, 8, 9, 10, 2]}], 0)
    with torch.no_grad():
        torch.testing.assert_close(model(**alone).logits[0], model(**padded).logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-encoder", "tiny-t5", "tiny-gpt2"])
def test_every_unipelt_prefix_gate_parameter_gets_a_gradient_that_is_not_zero(name):
    """A gate that may not read its input (decoder tokens' queries) is a learned logit pair; it once was a
    linear layer on a zero summary, whose weights counted as trained but never got a non-zero gradient."""
    model = _perturbed(name, "unipelt").train()
    batch = collate([{"input_ids": [1, 5, 6, 7, 8, 2]}, {"input_ids": [1, 9, 10, 2]}], 0)
    if name == "tiny-encoder":
        batch["labels"] = torch.tensor([0, 1])
    else:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch).loss.backward()
    gates = {n: p.grad for n, p in model.named_parameters() if "bench_prefix_gate" in n}
    assert gates and all(g is not None and g.abs().sum() > 0 for g in gates.values()), \
        [n for n, g in gates.items() if g is None or not g.abs().sum() > 0]


def test_unipelt_adapters_stored_with_linear_input_free_gates_load_unchanged():
    """Before InputFreeGate, an input-free gate was a linear layer on zeros and its weight was stored too:
    such a state (a random weight beside each stored logit pair) loads, and the model computes the same."""
    _, adapted = adapt("tiny-gpt2", "unipelt")
    trained = _perturbed("tiny-gpt2", "unipelt")
    adapted.model.load_state_dict(trained.state_dict())
    _, fresh = adapt("tiny-gpt2", "unipelt", seed=1)
    state = adapted.state_to_store()
    gates = [k for k in state if k.endswith("bench_prefix_gate.bias")]
    assert gates
    hidden = trained.config.hidden_size
    state.update({k[: -len("bias")] + "weight": torch.randn(2, hidden) for k in gates})
    fresh.load_state(state)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.model.eval()(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_compacter_pp_starts_near_the_base_model_and_trains_every_layer_norm(tiny_bundle):
    """T-Few's initialisation (rules from N(0, 0.02²), its VariantLayers.py) moves the outputs by little, but not
    by nothing (3.5e-3 of the logits' largest on tiny-t5); the layer norms of both stacks train, the rest of the
    body does not."""
    bundle, adapted = adapt("tiny-t5", "compacter-pp")
    base = tiny_bundle(bundle.spec.name).model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ours, theirs = (m(input_ids=ids, decoder_input_ids=ids).logits for m in (adapted.model.eval(), base))
    assert 0 < (ours - theirs).abs().max() < 1e-2 * theirs.abs().max()
    trainable = {n for n, p in adapted.model.named_parameters() if p.requires_grad}
    norms = {n for n in trainable if "layer_norm" in n}
    assert {n.split(".")[0] for n in norms} == {"encoder", "decoder"} and any("final_layer_norm" in n for n in norms)
    assert trainable - norms and all(".compacter." in n for n in trainable - norms)


def _applied(name: str, method: str, config: dict):
    """`method` with the resolved `config` as given (a stored adapter's, say) on a fresh tiny model."""
    bundle = build_bundle(name)
    return methods.get(method).apply(bundle.model, config, ApplyContext(bundle, TrainConfig(), 10))


def _check_rebuilt_where_trained(name: str, method: str, trained_config: dict, stored_config: dict, current: dict):
    """An adapter trained under `trained_config` (its tensors moved off their start), stored, and loaded into the
    method built from `stored_config` (what its stored config resolves to) gives its outputs; loaded into the
    `current` placement, others."""
    trained = _applied(name, method, trained_config)
    with torch.no_grad():
        for p in trained.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    state = trained.state_to_store()
    rebuilt, moved = _applied(name, method, stored_config), _applied(name, method, current)
    rebuilt.load_state(state)
    moved.load_state(state)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    batch = {"input_ids": ids, **({"decoder_input_ids": ids} if REGISTRY[name].arch == "t5" else {})}
    with torch.no_grad():
        expected, again, elsewhere = (a.model.eval()(**batch).logits for a in (trained, rebuilt, moved))
    torch.testing.assert_close(again, expected)
    assert (elsewhere - expected).abs().max() > 1e-3 * expected.abs().max()


@pytest.mark.parametrize("name", ["tiny-encoder", "tiny-t5", "tiny-gpt2", "tiny-llama"])
def test_pfeiffer_adapters_stored_by_revision_1_are_rebuilt_where_they_were_trained(name):
    """Revision 1 of adapter-pfeiffer read the FFN output projection; revision 2 (AdapterHub's SeqBnConfig) reads
    the block's output after its residual add (and layer norm). A stored adapter of revision 1 has no
    after_residual in its config: it is rebuilt as revision 1 (after_residual=False), its tensors load under the
    same names and give that model's outputs; the current placement gives others with the same tensors."""
    pfeiffer = methods.get("adapter-pfeiffer")
    arch = REGISTRY[name].arch
    current = pfeiffer.resolve({}, arch, str)
    assert current["after_residual"] and current["revision"] == 2
    revision_1 = {k: v for k, v in current.items() if k not in ("after_residual", "revision")}
    _check_rebuilt_where_trained(name, "adapter-pfeiffer", pfeiffer.resolve({"after_residual": False}, arch, str),
                                 revision_1, current)


@pytest.mark.parametrize("name", ["tiny-encoder", "tiny-t5", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method", ["unipelt", "propetl-adapter"])
def test_adapters_stored_before_after_residual_are_rebuilt_where_they_were_trained(method, name):
    """UniPELT's gated adapter and ProPETL's masked one read the FFN output projection h until they moved after the
    FFN block's residual add (and layer norm), where AdapterHub's SeqBnConfig (UniPELTConfig's adapter) and the
    ProPETL authors' Pfeiffer adapter sit. A stored adapter from before has no after_residual in its config: it is
    rebuilt reading h, its tensors load under the same names and give its outputs; the new placement, others."""
    chosen = methods.get(method)
    arch = REGISTRY[name].arch
    current = chosen.resolve({}, arch, str)
    assert current["after_residual"] and current["revision"] == {"unipelt": 3 if arch != "roberta" else 2,
                                                                 "propetl-adapter": 2}[method]
    before = {k: v for k, v in current.items() if k != "after_residual"}
    _check_rebuilt_where_trained(name, method, before, before, current)


def test_unipelt_gate_replaces_alpha_over_r_and_stored_revision_2_keeps_it():
    """The gated LoRA is σ(g·x) · B·A·x (the UniPELT authors' lora_layers.py and AdapterHub: the gate takes the
    place of alpha/r), so unipelt has no lora_alpha. Up to revision 2 it was σ · (alpha/r) · BAx with alpha 16 at
    r 8: a stored adapter of then carries lora_alpha in its config and is rebuilt with that factor."""
    from bench.layers.gated_lora import GatedLoRA

    unipelt = methods.get("unipelt")
    assert "lora_alpha" not in unipelt.defaults
    with pytest.raises(BadInput, match="lora_alpha"):
        unipelt.resolve({"lora_alpha": 16}, "roberta", str)
    current = unipelt.resolve({}, "roberta", str)
    stored = {**{k: v for k, v in current.items() if k != "revision"}, "lora_alpha": 16}
    for config, scaling in ((current, 1.0), (stored, 2.0)):
        branches = [m for m in _applied("tiny-encoder", "unipelt", config).model.modules() if isinstance(m, GatedLoRA)]
        assert branches and {m.scaling for m in branches} == {scaling}


@pytest.mark.parametrize("method", ["mam-adapter", "unipelt", "adapter-parallel", "adapter-houlsby",
                                    "adapter-pfeiffer"])
def test_adapter_down_biases_start_at_zero_where_the_references_do(method):
    """The parallel adapter's, MAM's and UniPELT's references (AdapterHub's ParBnConfig and MAM's "mam_adapter",
    UniPELT's "bert" inits) start the adapter's down bias at zero, and so do ours; Houlsby's and Pfeiffer's keep
    nn.Linear's init (their up projection is zero either way)."""
    from bench.layers.bottleneck import Bottleneck

    _, adapted = adapt("tiny-encoder", method)
    biases = [m.down.bias for m in adapted.model.modules() if isinstance(m, Bottleneck)]
    zero = method in ("mam-adapter", "unipelt", "adapter-parallel")
    assert biases and all(bool((b == 0).all()) == zero for b in biases)


@pytest.mark.parametrize("method,earlier", [("fishmask", None), ("fishmask", 2), ("child-tuning", 2),
                                            ("child-tuning", 3)])
def test_fisher_masked_adapters_of_earlier_revisions_still_load(method, earlier, tmp_path):
    """fishmask 2 and child-tuning 3 score their Fisher under the cell's autocast, fishmask 3 and child-tuning 4 the
    cell's objective. An adapter stored by an earlier revision (fishmask's first had no `revision` key) loads through
    `eval --adapter` (external-adapter) into a bf16 cell,
    whose own selection then runs under bf16 autocast (its masks may differ from the trained cell's), and predicts as
    the trained model: the selected values are stored at their indices, which load whatever masks the loading cell
    picks."""
    from types import SimpleNamespace

    from bench.cell.train import autocast_for
    from bench.methods import external

    chosen = methods.get(method)
    current = chosen.resolve({"fishmask": {"fisher_samples": 8}, "child-tuning": {"fisher_batches": 2}}[method],
                             "roberta", str)
    assert current["revision"] == {"fishmask": 3, "child-tuning": 4}[method]
    stored = {k: v for k, v in current.items() if k != "revision"} | ({"revision": earlier} if earlier else {})
    generator = torch.Generator().manual_seed(0)
    made = [{"input_ids": torch.randint(5, 100, (4, 16), generator=generator), "labels": torch.arange(4) % 2}
            for _ in range(2)]
    bundle = build_bundle("tiny-encoder")
    trained = chosen.apply(bundle.model, stored,
                           ApplyContext(bundle, TrainConfig(batch_size=4), 10, calibration_of(lambda n: made[:n])))
    with torch.no_grad():
        for p, mask in trained.grad_masks:  # selected entries move, the others stay the base model's
            p.add_(torch.randn(p.shape, generator=generator) * mask)
        for p in _trained_in_full(trained):
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    cell = SimpleNamespace(method=method, method_config=stored, family=chosen.family, model=bundle.spec,
                           task=SimpleNamespace(name="synth-polarity"), seed=1, suite="s", id="i", label=method)
    external.save_adapter(trained, cell, tmp_path)
    fresh = build_bundle("tiny-encoder")
    loaded = methods.get("external-adapter").apply(
        fresh.model, {"path": str(tmp_path), "sha256": ""},
        ApplyContext(fresh, TrainConfig(batch_size=4), 1, calibration_of(lambda n: made[:n]),
                     autocast=autocast_for("cpu", "bf16")))
    batch = {"input_ids": torch.tensor([[1, 5, 6, 7, 8, 9]])}
    with torch.no_grad():
        expected = trained.model.eval()(**batch).logits
        torch.testing.assert_close(loaded.model.eval()(**batch).logits, expected)
        assert not torch.equal(build_bundle("tiny-encoder").model.eval()(**batch).logits, expected)  # it loaded


def _trained_in_full(adapted) -> list[torch.Tensor]:
    """The tensors an adapter trains in full (head, child-tuning's embeddings): trainable, with no gradient mask."""
    masked = {id(p) for p, _ in adapted.grad_masks}
    return [p for p in adapted.model.parameters() if p.requires_grad and id(p) not in masked]
