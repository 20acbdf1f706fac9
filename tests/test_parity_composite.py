"""Parity of prefix tuning, MAM and UniPELT (in-house) and of (IA)³ and LoRA (peft) with AdapterHub `adapters` 1.3.0
(fixtures: scripts/parity/gen_adapterhub_composite.py, which says how the reference is configured).

Our model is rebuilt from the fixture's config with this environment's transformers (eager attention on both sides:
ours wraps transformers' eager attention, AdapterHub patches BERT/RoBERTa's), its base weights loaded by name, our
method applied with the fixture's overrides, and the reference's method weights loaded through the fixture's name map.
Logits, final hidden states, loss, every trained parameter's gradient and the parameters after the reference's SGD
steps must match to 1e-5, and so must the set and count of trained parameters.

UniPELT's adapter is UniPELTConfig's own, SeqBnConfig(reduction_factor=16): it reads LN(h + x) and the layer norm
is applied again to h + x + its output, as ours (unipelt's after_residual); a stored UniPELT adapter without that
setting is rebuilt reading h, SeqBnConfig(original_ln_before=False), which the test measures against the reference.

Where we differ on purpose, the test says by how much:
- UniPELT's gates: AdapterHub (like Mao et al.'s code) gates each example by the mean over all its tokens, padding
  included, of sigmoid(W x + b); ours gate LoRA and the adapter per token, and the prefix by sigmoid of W times the
  mean over real tokens. With the reference's gate formula put in ours everything else matches to 1e-5; with gate
  weights at zero (each gate sigmoid(b) in both forms) our unmodified UniPELT matches too; the logits of our gates on
  the reference's weights are printed.
- (IA)³: our default scales the FFN output projection's input (after the activation, as peft and T-Few), AdapterHub
  the intermediate projection's output (before it): the fixture configures ours onto AdapterHub's modules, and the
  test measures our default's distance with the same vectors.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from bench import methods
from bench.config import TrainConfig
from bench.methods.base import ApplyContext
from bench.models import Bundle, ModelSpec
from tests.parity import assert_matches, load, relative_difference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
METHODS = ["prefix-tuning", "mam-adapter", "unipelt", "ia3", "lora"]
# Where ours starts elsewhere than the reference's constant init. Our gated adapter keeps nn.Linear's uniform init
# for its gate's bias; AdapterHub's "bert" init (UniPELT's SeqBnConfig) zeroes it. The adapters' down biases start
# at zero in both (AdapterHub's "mam_adapter" and "bert" inits; ours since mam-adapter revision 2, unipelt 2/3).
# Our up projection starts at zero, so our adapted model starts as the base model; AdapterHub's UniPELT draws its
# up projection from N(0, 0.02²) (not constant: not checked).
INIT_DIFFERENCES = {"unipelt": (".adapters.parity.gate.bias",)}


def base_model(meta: dict, attention: str | None = None):
    """The fixture's base model in this environment's transformers, with the reference's attention unless told."""
    base, base_meta = load(meta["base_fixture"])
    model_class = getattr(transformers, base_meta["model_class"])
    torch.manual_seed(0)
    model = model_class(model_class.config_class(**base_meta["model_config"],
                                                 attn_implementation=attention or base_meta["attention"]))
    missing, unexpected = model.load_state_dict(base, strict=False)
    assert not unexpected, unexpected
    assert not [n for n, _ in model.named_parameters() if n in missing], "base weights missing from the fixture"
    return model.to(DEVICE).eval()


def apply(meta: dict, overrides: dict, attention: str | None = None):
    """Our method (the fixture's) with `overrides` on the base model; the adapted model (peft's wrapper for peft's)."""
    model = base_model(meta, attention)
    bundle = Bundle(ModelSpec("parity", "fixture model", "tiny", meta["arch"], meta["arch"]), model, None,
                    "classifier", 2)
    chosen = methods.get(meta["method"])
    return chosen.apply(model, chosen.resolve(overrides, meta["arch"], str),
                        ApplyContext(bundle, TrainConfig(), 1, device=DEVICE)).model


def ours(method: str, attention: str | None = None):
    """Our method as the fixture configures it, the reference's weights as used loaded; (model, tensors, meta)."""
    tensors, meta = load(f"adapterhub-{method}-roberta")
    model = apply(meta, meta["overrides"], attention)
    check_init(model, tensors, meta, INIT_DIFFERENCES.get(method, ()))
    load_used(model, tensors, meta["name_map"])
    return model, tensors, meta


def check_init(model, tensors: dict, meta: dict, differences: tuple[str, ...]) -> None:
    """Shapes agree with the reference's; where the reference starts from a constant (LoRA B and MAM's up
    projection at zero, (IA)³ at one), ours starts from the same, but for the stated `differences`."""
    parameters = dict(model.named_parameters())
    for name, init in ((k.removeprefix("init."), v) for k, v in tensors.items() if k.startswith("init.")):
        mine = parameters[meta["name_map"][name]]
        assert mine.numel() == init.numel(), name
        if init.numel() > 1 and (init == init.flatten()[0]).all() and not name.endswith(differences):
            assert torch.equal(mine.detach().cpu().reshape(init.shape), init), f"{name} starts elsewhere"


def load_used(model, tensors: dict, name_map: dict) -> None:
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, used in ((k.removeprefix("used."), v) for k, v in tensors.items() if k.startswith("used.")):
            mine = parameters[name_map[name]]
            mine.copy_(used.reshape(mine.shape))


def inputs_of(tensors: dict) -> dict:
    return {k: tensors[k].to(DEVICE) for k in ("input_ids", "attention_mask", "labels")}


def not_vacuous(tensors: dict, meta: dict) -> None:
    """The weights used move the reference's hidden states away from the base model's."""
    base_hidden = base_model(meta)(**inputs_of(tensors), output_hidden_states=True).hidden_states[-1]
    assert relative_difference(base_hidden, tensors["last_hidden"]) > 1e-3


def compare(method: str, model, tensors: dict, meta: dict) -> dict[str, float]:
    """Outputs, loss, gradients, trained set and count, parameters after the reference's SGD steps."""
    name_map = meta["name_map"]
    parameters = dict(model.named_parameters())
    trained = {n for n, p in parameters.items() if p.requires_grad}
    assert trained == set(name_map.values()), trained ^ set(name_map.values())
    assert sum(parameters[n].numel() for n in trained) == meta["trained_count"]
    inputs = inputs_of(tensors)
    out = model(**inputs, output_hidden_states=True)
    worst = {"outputs": max(assert_matches(f"{method} logits", out.logits, tensors["logits"]),
                            assert_matches(f"{method} last hidden", out.hidden_states[-1], tensors["last_hidden"])),
             "loss": assert_matches(f"{method} loss", out.loss.reshape(1), tensors["loss"])}
    out.loss.backward()
    worst["grads"] = max(assert_matches(f"{method} grad {n}", parameters[name_map[n]].grad.reshape(tensors[
        f"grad.{n}"].shape), tensors[f"grad.{n}"]) for n in name_map)
    optimiser = meta["optimizer"]
    assert optimiser["name"] == "SGD"
    sgd = torch.optim.SGD([parameters[n] for n in sorted(trained)], lr=optimiser["lr"],
                          momentum=optimiser["momentum"])
    for _ in range(optimiser["steps"]):
        sgd.zero_grad()
        model(**inputs).loss.backward()
        sgd.step()
    worst["after-step params"] = max(assert_matches(f"{method} after steps {n}", parameters[name_map[n]].reshape(
        tensors[f"stepped.{n}"].shape), tensors[f"stepped.{n}"]) for n in name_map)
    return worst


def report(method: str, worst: dict[str, float]) -> None:
    print(f"\nparity {method} (adapters 1.3.0, roberta): max relative difference "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


@pytest.fixture
def reference_gates(monkeypatch):
    """UniPELT's gates as AdapterHub computes them (ours otherwise): per example, the mean over every token (padding
    included) of sigmoid(W x + b). The gated LoRA's gate replaces alpha/r in both (the reference's alpha is 2 at
    r = 8, so a leftover alpha/r would show)."""
    from bench.layers import attention_prefix
    from bench.layers.bottleneck import Bottleneck
    from bench.layers.gated_lora import GatedLoRA

    def mean_gate(gate, x):
        return torch.sigmoid(gate(x)).mean(dim=1, keepdim=True)

    def lora_forward(self, x):
        return mean_gate(self.gate, x) * self.b(self.a(x)) * self.scaling

    def adapter_forward(self, x):
        delta = self.up(self.act(self.down(x))) * self.scaling
        return delta if self.gate is None else delta * mean_gate(self.gate, x)

    def prefix_gate(module, args, kwargs):
        site = module.bench_prefix
        site.gate_values = mean_gate(site.gate, args[0] if args else kwargs["hidden_states"]).squeeze(1)

    monkeypatch.setattr(GatedLoRA, "forward", lora_forward)
    monkeypatch.setattr(Bottleneck, "forward", adapter_forward)
    monkeypatch.setattr(attention_prefix, "_stash_gate", prefix_gate)  # read when add_prefix registers the hook


@pytest.mark.parametrize("method", [m for m in METHODS if m != "unipelt"])
def test_matches_adapterhub(method):
    model, tensors, meta = ours(method)
    not_vacuous(tensors, meta)
    report(method, compare(method, model, tensors, meta))


@pytest.mark.parametrize("method", ["prefix-tuning", "mam-adapter"])
def test_prefix_methods_match_adapterhub_under_sdpa(method):
    """The reference ran eager attention; our prefix wraps sdpa too (transformers' default), within 1e-5."""
    model, tensors, meta = ours(method, attention="sdpa")
    assert model.config._attn_implementation == "bench_prefix_sdpa"
    report(f"{method} (ours under sdpa)", compare(method, model, tensors, meta))


def test_unipelt_matches_adapterhub_with_its_gate_formula(reference_gates):
    model, tensors, meta = ours("unipelt")
    not_vacuous(tensors, meta)
    lora = next(c for c in meta["reference_config"]["configs"] if c.get("architecture") == "lora")
    assert lora["alpha"] != lora["r"] == meta["overrides"]["lora_r"]  # the reference's default LoRA: alpha 2, r 8
    assert "lora_alpha" not in methods.get("unipelt").defaults  # the gate is the whole scaling
    # the reference's default adapter (SeqBnConfig): LN(h + x) in, the same layer norm over h + x + its output
    adapter = next(c for c in meta["reference_config"]["configs"] if "original_ln_before" in c)
    assert adapter["original_ln_before"] and adapter["original_ln_after"] and adapter["residual_before_ln"] is True
    assert methods.get("unipelt").defaults["after_residual"] and "after_residual" not in meta["overrides"]
    report("unipelt (reference gate formula)", compare("unipelt", model, tensors, meta))


def test_unipelt_adapters_stored_before_the_placement_read_the_ffn_output(reference_gates):
    """A stored UniPELT adapter without after_residual (made when ours read the FFN output projection h) is rebuilt
    there: LN(h + gated adapter(h) + x). With the reference's weights and gate formula that is the printed distance
    from the reference (SeqBnConfig's LN(h + x + gated adapter(LN(h + x)))), which ours now matches."""
    tensors, meta = load("adapterhub-unipelt-roberta")
    unipelt = methods.get("unipelt")
    stored = {k: v for k, v in unipelt.resolve(meta["overrides"], meta["arch"], str).items() if k != "after_residual"}
    model = base_model(meta)
    bundle = Bundle(ModelSpec("parity", "fixture model", "tiny", meta["arch"], meta["arch"]), model, None,
                    "classifier", 2)
    old = unipelt.apply(model, stored, ApplyContext(bundle, TrainConfig(), 1, device=DEVICE)).model
    load_used(old, tensors, meta["name_map"])
    assert all(".output.dense.gated_adapter." in n for n in meta["name_map"].values() if "adapter.down" in n)
    with torch.no_grad():
        logits = old(**inputs_of(tensors)).logits
    apart = relative_difference(logits, tensors["logits"])
    assert apart > 1e-2
    print(f"\nparity unipelt, adapter after h (stored before after_residual): logits {apart:.1e} from AdapterHub's")


def test_unipelt_gates_differ_only_through_their_weights():
    """With every gate weight at zero a gate is sigmoid(b), per token or per example alike: our unmodified UniPELT
    then gives the reference's outputs. With the weights as used, the per-token gates move the logits by the
    printed amount (the padded row's prefix gate also ignores its padding in ours)."""
    model, tensors, meta = ours("unipelt")
    inputs = inputs_of(tensors)
    with torch.no_grad():
        ours_out = model(**inputs, output_hidden_states=True)
        parameters = dict(model.named_parameters())
        for name in meta["gate_weights"]:
            parameters[meta["name_map"][name]].zero_()
        out = model(**inputs)
    same = max(assert_matches("unipelt gates weightless logits", out.logits, tensors["gates_weightless.logits"]),
               assert_matches("unipelt gates weightless loss", out.loss.reshape(1), tensors["gates_weightless.loss"]))
    gated = relative_difference(ours_out.logits, tensors["logits"])
    assert gated > 1e-5, "the gate formulas differ: the weights used should show it"
    print(f"\nparity unipelt (our gates, gate weights zero): outputs and loss {same:.1e}; our gates on the "
          f"reference's weights: logits {gated:.1e}, last hidden "
          f"{relative_difference(ours_out.hidden_states[-1], tensors['last_hidden']):.1e}")


def test_ia3_default_targets_scale_after_the_activation():
    """Our default (IA)³ scales output.dense's input, gelu(h) ⊙ l; AdapterHub intermediate.dense's output,
    gelu(h ⊙ l): the same count, the same function only where l = 1. Printed: how far apart the same vectors put the
    logits."""
    tensors, meta = load("adapterhub-ia3-roberta")
    wrapped = apply(meta, {})  # our registry's (IA)³ targets for RoBERTa
    name_map = {k: v.replace(".intermediate.dense.", ".output.dense.") for k, v in meta["name_map"].items()}
    load_used(wrapped, tensors, name_map)
    parameters = dict(wrapped.named_parameters())
    assert sum(p.numel() for p in parameters.values() if p.requires_grad) == meta["trained_count"]
    with torch.no_grad():
        out = wrapped(**inputs_of(tensors), output_hidden_states=True)
    apart = relative_difference(out.hidden_states[-1], tensors["last_hidden"])
    assert apart > 1e-4
    print(f"\nparity ia3 (our default targets, same vectors): last hidden {apart:.1e}, logits "
          f"{relative_difference(out.logits, tensors['logits']):.1e} from AdapterHub's")
