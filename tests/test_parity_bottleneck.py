"""Parity of the bottleneck adapters and Compacter with AdapterHub `adapters` 1.3.0
(fixtures: scripts/parity/gen_adapterhub_bottleneck.py, which says how the reference is configured).

Our model is rebuilt from the fixture's config with this environment's transformers, its base weights loaded by
name, our method applied at its defaults (Compacter: reduction factor 8, as the reference needs at hidden 32), and
the reference's method weights loaded through the fixture's name map. Then logits, final hidden states, loss,
every trained parameter's gradient and the parameters after the reference's SGD steps must match to 1e-5.
adapter-pfeiffer is compared with AdapterHub's default SeqBnConfig() on RoBERTa and BERT (post-LN) and on GPT-2,
LLaMA and T5 (pre-LN); its revision 1 (after_residual=False) with SeqBnConfig(original_ln_before=False).
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
CASES = ["houlsby-roberta", "pfeiffer-roberta", "parallel-roberta", "compacter-roberta", "houlsby-bert",
         "pfeiffer-bert", "pfeiffer-gpt2", "pfeiffer-llama", "pfeiffer-t5"]
PFEIFFER = [c for c in CASES if c.startswith("pfeiffer-")]
# Our defaults next to the reference config class's (AdapterHub's key on the right); intended differences below.
SAME_DEFAULTS = {"adapter-houlsby": {"reduction_factor": "reduction_factor", "activation": "non_linearity"},
                 "adapter-pfeiffer": {"reduction_factor": "reduction_factor", "activation": "non_linearity"},
                 "adapter-parallel": {"activation": "non_linearity", "scaling": "scaling"},
                 "compacter": {"reduction_factor": "reduction_factor", "phm_dim": "phm_dim", "phm_rank": "phm_rank"}}
# ParBnConfig's reduction factor is 2 (He et al.'s 512-wide bottleneck on a 1024-wide model); ours keeps 16
# beside the other adapters, and the reference is configured with 16 for the fixture.
PARALLEL_REDUCTION = {"ours": 16, "reference": 2}
HOULSBY_NORMS = {"roberta": 2 * 32 * (1 + 2 * 2), "bert": 2 * 32 * (1 + 2 * 2)}  # embeddings' + 2 per layer, hidden 32


def base_model(arch: str):
    """The base model in this environment's transformers, with the fixture's weights and batch."""
    tensors, meta = load(f"adapterhub-base-{arch}")
    model_class = getattr(transformers, meta["model_class"])
    config = model_class.config_class(**meta["config"])
    torch.manual_seed(0)
    model = model_class(config)
    weights = {k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert not [n for n, _ in model.named_parameters() if n in missing], "base weights missing from the fixture"
    inputs = {k: tensors[k].to(DEVICE) for k in ("input_ids", "attention_mask", "labels")}
    return model.to(DEVICE).eval(), inputs, tensors


def ours(case: str, overrides: dict | None = None):
    """Our method applied to the base model (the fixture's overrides, then `overrides`); returns (model, inputs,
    fixture tensors, meta, base tensors)."""
    tensors, meta = load(f"adapterhub-{case}")
    model, inputs, base = base_model(meta["arch"])
    bundle = Bundle(ModelSpec("parity", "fixture model", "tiny", meta["arch"], meta["arch"]), model, None,
                    "classifier", 2)
    method = methods.get(meta["method"])
    method.apply(model, method.resolve({**meta["overrides"], **(overrides or {})}, meta["arch"], str),
                 ApplyContext(bundle, TrainConfig(), 1, device=DEVICE))
    return model, inputs, tensors, meta, base


def load_reference(model, tensors: dict, meta: dict, prefix: str) -> None:
    state = {meta["name_map"][k.removeprefix(prefix)]: v.to(DEVICE) for k, v in tensors.items()
             if k.startswith(prefix)}
    assert state, f"no {prefix}* tensors in the fixture"
    assert not model.load_state_dict(state, strict=False).unexpected_keys


def run(model, inputs):
    out = model(**inputs, output_hidden_states=True)
    hidden = out.decoder_hidden_states if "decoder_hidden_states" in out else out.hidden_states  # T5's: decoder's
    return out.logits, hidden[-1], out.loss


@pytest.mark.parametrize("case", CASES)
def test_outputs_grads_and_steps_match_adapterhub(case):
    model, inputs, tensors, meta, base = ours(case)
    # not vacuous: the weights used move the reference's logits well away from the base model's
    assert relative_difference(tensors["logits"], base["logits"]) > 1e-1
    load_reference(model, tensors, meta, "used.")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    reverse = {ours_name: theirs for theirs, ours_name in meta["name_map"].items()}
    differences = {}
    logits, hidden, loss = run(model, inputs)
    differences["logits"] = assert_matches("logits", logits, tensors["logits"])
    differences["hidden"] = assert_matches("hidden", hidden, tensors["hidden"])
    differences["loss"] = assert_matches("loss", loss, tensors["loss"])
    loss.backward()
    differences["grads"] = max(assert_matches(f"grad {n}", p.grad, tensors[f"grad.{reverse[n]}"])
                               for n, p in trained.items())
    optimizer = torch.optim.SGD(trained.values(), lr=meta["optimizer"]["lr"])
    losses = []
    for _ in range(meta["optimizer"]["steps"]):
        optimizer.zero_grad()
        step_loss = run(model, inputs)[2]
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.detach())
    differences["step losses"] = assert_matches("step losses", torch.stack(losses), tensors["step_losses"])
    differences["stepped"] = max(assert_matches(f"stepped {n}", p, tensors[f"stepped.{reverse[n]}"])
                                 for n, p in trained.items())
    print(f"\nparity {meta['method']} ({meta['arch']}) vs adapters {meta['pins']['adapters']}: largest relative "
          f"difference {max(differences.values()):.2e} ("
          + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()) + ")")


@pytest.mark.parametrize("case", CASES)
def test_trained_parameters_are_the_reference_ones(case):
    """Same trained set through the name map, and count; Houlsby also trains the layer norms (AdapterHub not)."""
    model, _, _, meta, _ = ours(case)
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    reference = {meta["name_map"][n] for n in meta["reference_trained"]}
    norms = {meta["name_map"][n] for n in meta["norms_unfrozen_by_hand"]}
    assert set(trained) == reference | norms
    assert sum(trained.values()) == meta["trained_count"]
    extra = meta["trained_count"] - meta["reference_trained_count"]
    assert extra == (HOULSBY_NORMS[meta["arch"]] if meta["method"] == "adapter-houlsby" else 0)
    assert sum(trained[n] for n in norms) == extra


@pytest.mark.parametrize("case", CASES)
def test_reference_init_weights_give_its_init_outputs(case):
    """With the reference's own init loaded, ours gives its logits at init too; at our init (up projections zero)
    ours gives the base model's logits, which the reference's init does not (its up projections are not zero)."""
    model, inputs, tensors, meta, base = ours(case)
    with torch.no_grad():
        assert_matches("logits at our init = base logits", run(model, inputs)[0], base["logits"])
        load_reference(model, tensors, meta, "init.")
        at_init = assert_matches("logits at the reference's init", run(model, inputs)[0], tensors["logits_init"])
    # the reference's init: up projections drawn (bert: N(0, 0.02); Compacter: glorot-normal with a N(0, 1e-4) rule),
    # zero only for ParBnConfig (mam_adapter); so its init logits differ from the base model's by this much
    moved = relative_difference(tensors["logits_init"], base["logits"])
    assert (moved == 0) == (meta["method"] == "adapter-parallel")
    print(f"\nparity {meta['method']} ({meta['arch']}): at the reference's init {at_init:.1e} from it; its init "
          f"logits are {moved:.1e} from the base model's (ours: 0)")


def test_parallel_adapter_starts_where_parbnconfig_starts():
    """ParBnConfig's "mam_adapter" init: the down weight from kaiming_uniform(a=√5), U(±1/√d) as nn.Linear's, the
    down bias, up weight and up bias zero. Ours (adapter-parallel revision 2) starts from the same zeros and draws
    its down weight within the same bound; revision 1 kept nn.Linear's uniform down bias."""
    model, _, tensors, meta, _ = ours("parallel-roberta")
    assert meta["reference_config"]["init_weights"] == "mam_adapter"
    assert methods.get("adapter-parallel").revisions[meta["arch"]] == 2
    parameters = dict(model.named_parameters())
    zeros = []
    for name, init in ((k.removeprefix("init."), v) for k, v in tensors.items() if k.startswith("init.")):
        mine = parameters[meta["name_map"][name]].detach().cpu()
        if not init.any():
            assert torch.equal(mine, init), f"{name}: the reference starts at zero, ours not"
            zeros.append(name.rsplit(".adapters.", 1)[1])
        else:  # the down weight: both uniform within 1/√(fan_in)
            bound = init.shape[1] ** -0.5
            assert 0.5 * bound < init.abs().max() <= bound and 0.5 * bound < mine.abs().max() <= bound, name
    assert sorted(set(zeros)) == ["parity.adapter_down.0.bias", "parity.adapter_up.bias", "parity.adapter_up.weight"]


@pytest.mark.parametrize("case", PFEIFFER)
def test_pfeiffer_is_adapterhubs_default_and_its_revision_1_reads_the_ffn_output(case):
    """The fixture's reference is SeqBnConfig() as it comes: post-LN the adapter reads LN(h + x) and the block
    returns LN(h + x + A(LN(h + x))), pre-LN s + A(s) with s = h + x. Revision 1 (after_residual=False, what a stored
    adapter of revision 1 is rebuilt as) read h and gave LN(h + A(h) + x), or s + A(h): exactly AdapterHub's
    SeqBnConfig(original_ln_before=False), and by more than 1 % of the logits from the default."""
    _, meta = load(f"adapterhub-{case}")
    assert meta["reference_config"] == meta["reference_defaults"]
    assert meta["reference_defaults"]["original_ln_before"] and meta["reference_defaults"]["original_ln_after"]
    assert methods.get("adapter-pfeiffer").revisions[meta["arch"]] == 2
    model, inputs, tensors, meta, _ = ours(case, {"after_residual": False})
    load_reference(model, tensors, meta, "used.")
    with torch.no_grad():
        logits = run(model, inputs)[0]
    old = assert_matches("revision 1 vs SeqBnConfig(original_ln_before=False)", logits, tensors["logits_old_placement"])
    apart = relative_difference(logits, tensors["logits"])
    assert apart > 1e-2
    print(f"\nparity adapter-pfeiffer revision 1 ({meta['arch']}): {old:.1e} from AdapterHub's "
          f"original_ln_before=False, {apart:.2e} from its default SeqBnConfig (revision 2 matches that)")


@pytest.mark.parametrize("case", CASES)
def test_defaults_are_the_reference_config_defaults(case):
    _, meta = load(f"adapterhub-{case}")
    ours_defaults = methods.get(meta["method"]).defaults
    for key, theirs in SAME_DEFAULTS[meta["method"]].items():
        assert ours_defaults[key] == meta["reference_defaults"][theirs], key
    if meta["method"] == "adapter-parallel":
        assert ours_defaults["reduction_factor"] == PARALLEL_REDUCTION["ours"]
        assert meta["reference_defaults"]["reduction_factor"] == PARALLEL_REDUCTION["reference"]
    if meta["method"] == "compacter":  # one rule shared by every PHM layer, rank-1 factors, a bias per layer
        assert meta["reference_defaults"]["shared_phm_rule"] and not meta["reference_defaults"]["shared_W_phm"]
        assert meta["reference_defaults"]["factorized_phm_W"] and meta["reference_defaults"]["phm_bias"]
        assert not meta["reference_defaults"]["factorized_phm_rule"]
