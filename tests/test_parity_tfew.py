"""Parity of (IA)³, BitFit, Compacter++ and both prompt tunings with T-Few's code (r-three/t-few at the fixtures'
commit; fixtures: scripts/parity/gen_tfew.py, which says how each method is configured there).

Our model is a T5 v1.1-shaped toy (gated-GELU FFN, untied head) rebuilt from tfew-t5-base's config with this
environment's transformers, its base weights loaded by name; our method is applied (Compacter++ at reduction factor
4, as T-Few's PHM layers need at d_model 32; prompt tuning with T-Few's 10 prompts; prompt-tuning-tfew seeded as
T-Few was, so it draws T-Few's vocabulary rows) and T-Few's tensors loaded
through the fixture's name map. The batch is prepared as T-Few's training_step prepares it. Logits, encoder states,
loss, every trained tensor's gradient, the losses and tensors over T-Few's SGD steps must match to 1e-5.

Where we differ on purpose, the difference is measured: BitFit trains no layer norms (T-Few's config trains them
too), and prompt tuning (peft's) has no decoder prompt and starts from N(0, 1), not from vocabulary rows;
prompt-tuning-tfew is T-Few's default (encoder and decoder prompts from vocabulary rows) and matches it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from bench import methods
from bench.config import TrainConfig
from bench.methods.base import ApplyContext
from bench.models import Bundle, ModelSpec, untie_as_checkpoints_are
from tests.parity import assert_matches, load, relative_difference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = ["ia3", "bitfit", "compacter-pp", "prompt-tuning", "prompt-tuning-tfew"]
# Our settings for the fixture's model, beside T-Few's (tfew_overrides in the fixture's meta).
OVERRIDES = {"ia3": {}, "bitfit": {}, "compacter-pp": {"reduction_factor": 4},
             "prompt-tuning": {"num_virtual_tokens": 10}, "prompt-tuning-tfew": {}}


def base_model():
    """The base model in this environment's transformers, with the fixture's weights, and T-Few's batch."""
    tensors, meta = load("tfew-t5-base")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**meta["config"]))
    # transformers 5's T5Config ties the head whatever the config says; loading a T5 v1.1 / T0 checkpoint unties it
    untie_as_checkpoints_are(model, meta["config"])
    weights = {k.removeprefix("base."): v.float() * 2.0 ** meta["scale_log2"] for k, v in tensors.items()
               if k.startswith("base.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= set(meta["tied_to_shared"]), missing
    for name in meta["tied_to_shared"]:
        assert model.get_submodule(name.removesuffix(".weight")).weight is model.shared.weight
    assert model.lm_head.weight is not model.shared.weight
    return model.to(DEVICE).eval(), tfew_batch(tensors, meta["config"]["pad_token_id"])


def tfew_batch(tensors: dict, pad: int) -> dict:
    """As T-Few's EncoderDecoder.training_step (its src/models/EncoderDecoder.py lines 97-111, in the meta)."""
    input_ids, target_ids = tensors["input_ids"].to(DEVICE), tensors["target_ids"].to(DEVICE)
    decoder_input_ids = torch.cat([torch.zeros_like(target_ids[:, :1]), target_ids[:, :-1]], dim=1)
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad).float(), "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": torch.ones_like(decoder_input_ids).float(),
            "labels": target_ids + -100 * (target_ids == pad).long()}


def ours(case: str, fixture: str | None = None, overrides: dict | None = None):
    """Our method on the base model: (model, batch, fixture tensors, meta); by default the case's fixture and
    settings, seeded as the fixture's reference was where it says so."""
    tensors, meta = load(f"tfew-{fixture or case}")
    model, batch = base_model()
    bundle = Bundle(ModelSpec("parity", "fixture model", "tiny", "t5", "t5"), model, None, "lm", None)
    method = methods.get(case)
    torch.manual_seed(meta.get("seed", 0))
    adapted = method.apply(model, method.resolve(OVERRIDES[case] if overrides is None else overrides, "t5", str),
                           ApplyContext(bundle, TrainConfig(), 1, device=DEVICE))
    return adapted.model.to(DEVICE), batch, tensors, meta


def load_reference(model, tensors: dict, meta: dict, prefix: str) -> None:
    """T-Few's tensors into ours through the name map ((IA)³'s FFN vectors are [d_ff, 1] there, [1, d_ff] here)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for theirs, name in meta["name_map"].items():
            params[name].copy_(tensors[prefix + theirs].reshape(params[name].shape))


def compared(what: str, ours_tensor: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> float:
    return assert_matches(what, ours_tensor, theirs.to(ours_tensor.device).reshape(ours_tensor.shape), rtol)


def compared_at_scale(what: str, ours_tensor: torch.Tensor, theirs: torch.Tensor, scale: float) -> float:
    """As `compared`, but a tensor that is zero up to rounding next to the rest (`scale`: the largest of them) is
    compared relative to `scale`: BitFit's key biases, whose gradients vanish because the softmax is blind to
    q·b added to every key's score, would otherwise compare rounding errors with one another."""
    if float(theirs.abs().max()) >= 1e-6 * scale:
        return compared(what, ours_tensor, theirs)
    difference = float((ours_tensor.detach().cpu().double() - theirs.double().reshape(ours_tensor.shape)).abs().max())
    assert difference <= 1e-5 * scale, f"{what}: {difference:.3e} from the reference's zero, next to {scale:.3e}"
    return difference / scale


def run(model, batch):
    out = model(**batch)
    return out.logits, out.encoder_last_hidden_state, out.loss


@pytest.mark.parametrize("case", CASES)
def test_outputs_grads_and_steps_match_tfew(case):
    model, batch, tensors, meta = ours(case)
    with torch.no_grad():
        plain, _ = base_model()
        base_logits = plain(**batch).logits
    # not vacuous: the tensors used move T-Few's logits away from the base model's
    assert relative_difference(tensors["logits"], base_logits) > 1e-2
    load_reference(model, tensors, meta, "used.")
    params = dict(model.named_parameters())
    mapped = {meta["name_map"][n]: n for n in meta["trained"] if f"grad.{n}" in tensors}
    assert set(mapped) == {n for n, p in params.items() if p.requires_grad}
    differences = {}
    logits, encoder_states, loss = run(model, batch)
    differences["logits"] = compared("logits", logits, tensors["logits"])
    differences["encoder states"] = compared("encoder states", encoder_states, tensors["encoder_states"])
    differences["loss"] = compared("loss", loss, tensors["loss"])
    loss.backward()
    scale = max(float(tensors[f"grad.{t}"].abs().max()) for t in mapped.values())
    differences["grads"] = max(compared_at_scale(f"grad {n}", params[n].grad, tensors[f"grad.{t}"], scale)
                               for n, t in mapped.items())
    used = {n: params[n].detach().clone() for n in mapped}
    optimizer = torch.optim.SGD([params[n] for n in mapped], lr=meta["optimizer"]["lr"])
    losses = [loss.detach()]
    optimizer.step()
    for _ in range(meta["optimizer"]["steps"] - 1):
        optimizer.zero_grad()
        step_loss = run(model, batch)[2]
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.detach())
    differences["step losses"] = compared("step losses", torch.stack(losses), tensors["step_losses"])
    differences["after steps"] = max(compared(f"after {n}", params[n], tensors[f"after.{t}"])
                                     for n, t in mapped.items())
    # the updates alone, so a small step on a large tensor (the (IA)³ vectors, ~1) is checked as closely
    updates = {t: tensors[f"after.{t}"] - tensors[f"used.{t}"] for t in mapped.values()}
    scale = max(float(u.abs().max()) for u in updates.values())
    differences["updates"] = max(compared_at_scale(f"update {n}", params[n] - used[n], updates[t], scale)
                                 for n, t in mapped.items())
    print(f"\nparity {case} vs T-Few {meta['commit'][:12]}: largest relative difference "
          f"{max(differences.values()):.2e} (" + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()) + ")")


@pytest.mark.parametrize("case", CASES)
def test_trained_parameters_are_tfews(case):
    """The trained set through the name map, and its count; where T-Few's config trains more, exactly how much."""
    model, _, tensors, meta = ours(case)
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    reference = {meta["name_map"][n] for n in meta["trained"] if n in meta["name_map"]}
    assert set(trained) == reference
    unmapped = [n for n in meta["trained"] if n not in meta["name_map"]]
    extra = sum(tensors[f"init.{n}"].numel() for n in unmapped)
    assert sum(trained.values()) == meta["trained_count"] - extra
    if case == "prompt-tuning":  # T-Few's decoder prompt: as many parameters as the encoder's (10 x 32)
        assert unmapped == ["decoder.prompt_embedding"] and extra == sum(trained.values()) == 10 * 32
    else:
        assert not unmapped
    if case == "bitfit":
        configured = meta["as_configured"]
        norms = sorted(set(configured["trained"]) - set(meta["trained"]))
        assert norms and all("layer_norm" in n for n in norms) and set(meta["trained"]) < set(configured["trained"])
        # T-Few's BitFit also trains every layer norm: 2 per encoder block, 3 per decoder block, 2 final, 32 each
        assert configured["count"] - meta["trained_count"] == (2 * 2 + 3 * 2 + 2) * 32 == 384
        print(f"\nparity bitfit: T-Few's config trains {configured['count']} parameters, ours "
              f"{meta['trained_count']}: the {len(norms)} layer norms ({configured['trainable_param_names']})")


@pytest.mark.parametrize("case", ["ia3", "bitfit"])
def test_init_is_tfews(case):
    """(IA)³'s vectors start at one and BitFit's added biases at zero, in both: the model starts as the base."""
    model, _, tensors, meta = ours(case)
    params = dict(model.named_parameters())
    for theirs, name in meta["name_map"].items():
        compared(f"init {name}", params[name], tensors[f"init.{theirs}"], rtol=0)


def test_compacter_pp_initialises_as_tfew():
    """T-Few's PHMLinear draws its rule from N(0, 0.02²) (c_init normal, unfactorised rule: its
    compacter_phm_init_range does not reach it) and each axis's rank-1 factors Glorot-uniform with gain sqrt(2);
    the biases start at zero. Draws differ, so the spreads are compared, pooled over layers per tensor role."""
    model, _, tensors, meta = ours("compacter-pp")
    params = dict(model.named_parameters())
    assert 0.015 < meta["rule_init_std"] < 0.025
    roles = {}
    for theirs, name in meta["name_map"].items():
        if ".compacter." in name:
            roles.setdefault(name.split(".compacter.")[1], []).append((params[name], tensors[f"init.{theirs}"]))
    assert sorted(roles) == sorted(f"{p}.{leaf}" for p in ("down", "up") for leaf in ("bias", "rule.a", "s", "t"))
    for role, pairs in roles.items():
        ours_init = torch.cat([p.detach().flatten().cpu() for p, _ in pairs])
        theirs = torch.cat([t.flatten() for _, t in pairs])
        if role.endswith("bias"):
            assert not ours_init.any() and not theirs.any()
            continue
        ratio = float(ours_init.std() / theirs.std())
        bound = float(theirs.abs().max())
        assert 0.6 < ratio < 1.6, f"{role}: our init's spread is {ratio:.2g} times T-Few's"
        if not role.endswith("rule.a"):  # uniform: within the same bound
            assert float(ours_init.abs().max()) <= bound * 1.5


def test_prompt_tuning_differs_from_tfews_default_by_its_decoder_prompt():
    """T-Few's default prompt tuning (Config: prompt_tuning_encoder and prompt_tuning_decoder true) also prepends
    prompts to the decoder; ours (peft, num_transformer_submodules 1) equals T-Few's with the decoder prompt off,
    and differs from its default by what the decoder prompt does. T-Few's prompts start as vocabulary rows, ours
    from N(0, 1)."""
    model, batch, tensors, meta = ours("prompt-tuning")
    assert meta["tfew_defaults"] == {"prompt_tuning_encoder": True, "prompt_tuning_decoder": True}
    assert meta["init_rows_from_vocabulary"]
    prompt = dict(model.named_parameters())["prompt_encoder.default.embedding.weight"].detach()
    vocabulary = load("tfew-t5-base")[0]["base.shared.weight"].to(DEVICE).float()
    assert not any(torch.equal(row, v) for row in prompt for v in vocabulary * 2.0 ** -6)
    assert 0.5 < float(prompt.std()) < 1.5
    load_reference(model, tensors, meta, "used.")
    with torch.no_grad():
        logits, _, loss = run(model, batch)
    theirs = relative_difference(tensors["logits"], tensors["default.logits"])
    difference = compared("logits vs T-Few's default", logits, tensors["default.logits"], rtol=float("inf"))
    assert difference > 1e-2 and abs(difference - theirs) <= 1e-5 * theirs
    loss_gap = float(loss.cpu() - tensors["default.loss"])
    print(f"\nparity prompt-tuning vs T-Few's default (decoder prompts too): logits differ by {difference:.2e} "
          f"relative, loss by {loss_gap:+.3e}; trained parameters {prompt.numel()} vs {2 * prompt.numel()}")


@pytest.mark.parametrize("case", CASES)
def test_defaults_are_tfews_config(case):
    """Our defaults are T-Few's settings for the method (configs/<method>.json), but the documented ones."""
    _, meta = load(f"tfew-{case}")
    method, settings = methods.get(meta["method"]), meta["tfew_settings"]
    train_lr = method.train.get("lr")
    if case == "compacter-pp":
        assert method.defaults["reduction_factor"] == settings["adapter_reduction_factor"]
        assert method.defaults["phm_dim"] == settings["compacter_hypercomplex_division"]
        assert method.defaults["phm_rank"] == settings["compacter_phm_rank"]
        assert method.defaults["activation"] == settings["adapter_non_linearity"]
        assert not settings["compacter_shared_phm_rule"] and not settings["compacter_factorized_phm_rule"]
        assert settings["compacter_phm_c_init"] == "normal"
    if case == "prompt-tuning":
        assert settings["prompt_tuning_num_prefix_emb"] == 10  # ours 20 (the suite sets T-Few's 10)
    if case == "prompt-tuning-tfew":
        assert method.defaults == {"num_virtual_tokens": settings["prompt_tuning_num_prefix_emb"],
                                   "decoder_prompt": True}  # T-Few's Config: prompt_tuning_decoder true
    # BitFit: ours 1e-3 beside the other partial methods; T-Few's 3e-4 is set by the fewshot suite
    assert train_lr == (1e-3 if case == "bitfit" else settings["lr"])


def test_prompt_tuning_tfew_starts_from_tfews_vocabulary_rows():
    """Seeded as T-Few was, ours draws T-Few's ids (torch.randint(3, 5003) on the CPU generator, encoder first)
    and each prompt row is the vocabulary embedding's row at its id."""
    model, _, tensors, meta = ours("prompt-tuning-tfew")
    params = dict(model.named_parameters())
    vocabulary = load("tfew-t5-base")[0]["base.shared.weight"].float() * 2.0 ** -6
    for theirs, name in meta["name_map"].items():
        compared(f"init {name}", params[name], tensors[f"init.{theirs}"], rtol=0)
        ids = meta["drawn_ids"][theirs.split(".")[0]]
        assert all(3 <= i < 32 for i in ids)
        assert torch.equal(params[name].detach().cpu(), vocabulary[ids])


def test_prompt_tuning_tfew_without_its_decoder_prompt_is_tfews_encoder_prompt():
    """decoder_prompt false is T-Few's wrapper with prompt_tuning_decoder off (the tfew-prompt-tuning fixture):
    the same logits, encoder states and loss on the same encoder prompt."""
    model, batch, tensors, _ = ours("prompt-tuning-tfew", "prompt-tuning", {"decoder_prompt": False})
    prompt = dict(model.named_parameters())["encoder.bench_prompt.weight"]
    with torch.no_grad():
        prompt.copy_(tensors["used.encoder.prompt_embedding"])
        logits, encoder_states, loss = run(model, batch)
    compared("logits", logits, tensors["logits"])
    compared("encoder states", encoder_states, tensors["encoder_states"])
    compared("loss", loss, tensors["loss"])
