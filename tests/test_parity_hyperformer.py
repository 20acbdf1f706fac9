"""Parity of HyperFormer++ with the authors' code (rabeehk/hyperformer at the fixture's commit, their whole T5 on
transformers 3.5.1; fixture: scripts/parity/gen_hyperformer.py, which says how it is configured there).

Our model is the fixture's small T5 rebuilt with this environment's transformers, its base weights loaded by name,
hyperformer applied with the fixture's smaller widths (the rest at our defaults, which must be the reference's
hyperformer++.json as its own argument classes read it) for the fixture's two tasks, and the reference's tensors
loaded under our names. Logits under each task, encoder states, loss, every trained tensor's gradient, the losses
and tensors over the reference's SGD steps (task 0's batch, then task 1's) must match to 1e-5; so must a batch
whose rows are of different tasks, each row against the reference's run of its own task.
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from bench import methods
from bench.config import TrainConfig
from bench.layers import task_heads
from bench.methods.base import ApplyContext
from bench.models import Bundle, ModelSpec
from tests.parity import assert_matches, load, relative_difference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the reference's settings under our names (its non_linearity, add_layer_norm_after_adapter + conditional_layer_norm:
# the generated post-adapter norm, and unfreeze_layer_norms)
OUR_NAMES = {"reduction_factor": "reduction_factor", "task_embedding_dim": "task_embedding_dim",
             "projected_task_embedding_dim": "projected_task_embedding_dim", "task_hidden_dim": "task_hidden_dim",
             "non_linearity": "activation"}


def base_model(meta: dict, tensors: dict):
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(**meta["config"], tie_word_embeddings=True))
    weights = {k.removeprefix("base."): v.float() * 2.0 ** meta["scale_log2"] for k, v in tensors.items()
               if k.startswith("base.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}, missing
    assert model.lm_head.weight is model.shared.weight
    return model.to(DEVICE).eval()


def batch(tensors: dict) -> dict:
    """As the generator's `forward`: pad 0, labels -100 at pads, decoder input [0] + target[:-1], all attended."""
    input_ids, target_ids = tensors["input_ids"].to(DEVICE), tensors["target_ids"].to(DEVICE)
    decoder_input_ids = torch.cat([torch.zeros_like(target_ids[:, :1]), target_ids[:, :-1]], dim=1)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": torch.ones_like(decoder_input_ids),
            "labels": target_ids.masked_fill(target_ids == 0, -100)}


def ours(load_used: bool = True):
    tensors, meta = load("hyperformer-t5")
    model = base_model(meta, tensors)
    bundle = Bundle(ModelSpec("parity", "fixture model", "tiny", "t5", "t5"), model, None, "lm", None)
    method = methods.get("hyperformer")
    mixture = types.SimpleNamespace(members=meta["tasks"])  # the build reads how many tasks there are
    adapted = method.apply(model, method.resolve(meta["overrides"], "t5", str),
                           ApplyContext(bundle, TrainConfig(), 1, device=DEVICE, task=mixture))
    model = adapted.model.to(DEVICE)
    if load_used:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in meta["trained"]:
                params[name].copy_(tensors[f"used.{name}"])
    return model, batch(tensors), tensors, meta


def compared(what: str, ours_tensor: torch.Tensor, theirs: torch.Tensor) -> float:
    return assert_matches(what, ours_tensor, theirs.to(ours_tensor.device).reshape(ours_tensor.shape))


def test_defaults_are_the_references_hyperformer_pp_json():
    _, meta = load("hyperformer-t5")
    read = meta["settings_as_read"]
    defaults = methods.get("hyperformer").defaults
    assert {ours_name: defaults[ours_name] for ours_name in OUR_NAMES.values()} == \
        {ours_name: read[theirs] for theirs, ours_name in OUR_NAMES.items()}
    # the one adapter we build: generated weights, a generated layer norm after the adapter and none before, its
    # task embeddings used as they are (no projection), layer norms trained, LM head not
    assert read["efficient_unique_hyper_net"] and read["adapter_config_name"] == "meta-adapter"
    assert read["add_layer_norm_after_adapter"] and read["conditional_layer_norm"]
    assert not read["add_layer_norm_before_adapter"] and not read["train_task_embeddings"]
    assert meta["unfreeze_layer_norms"] is defaults["train_layer_norm"] is True and meta["unfreeze_lm_head"] is False


def test_trained_parameters_and_their_init_are_the_references():
    model, _, tensors, meta = ours(load_used=False)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trained) == set(meta["trained"])
    assert sum(p.numel() for p in trained.values()) == meta["trained_count"]
    pooled: dict[str, list] = {"embeddings": [], "linear weights": []}
    for name, std in meta["init_std"].items():
        if name in meta["init_zero"]:
            assert not trained[name].any(), name
        elif std == 0:  # the code's layer norm starts at one, in both
            assert bool((trained[name] == 1).all()), name
        else:
            pooled["embeddings" if "embeddings" in name else "linear weights"].append((trained[name], std))
    for kind, pairs in pooled.items():  # drawn alike (N(0, 1) and N(0, 0.01²)), not the same draws
        ours_std = float(torch.cat([p.detach().flatten() for p, _ in pairs]).std())
        theirs_std = (sum(p.numel() * std ** 2 for p, std in pairs) / sum(p.numel() for p, _ in pairs)) ** 0.5
        assert 0.6 < ours_std / theirs_std < 1.6, f"{kind}: our init's spread is {ours_std / theirs_std:.2g} times"


def run(model, inputs: dict, rows):
    task_heads.select(model, rows)
    return model(**inputs)


def test_outputs_grads_and_steps_match_the_authors_code():
    model, inputs, tensors, meta = ours()
    tasks = meta["tasks"]
    with torch.no_grad():
        plain = base_model(meta, tensors)(**inputs).logits
    # not vacuous: the generated adapters move the reference's logits, and differently per task
    assert relative_difference(tensors["logits.t0"], plain) > 1e-2
    assert relative_difference(tensors["logits.t1"], tensors["logits.t0"]) > 1e-2
    differences = {}
    with torch.no_grad():
        for index, task in enumerate(tasks):
            differences[f"logits {task}"] = compared(f"logits {task}", run(model, inputs, index).logits,
                                                     tensors[f"logits.{task}"])
        mixed = run(model, inputs, torch.tensor([0, 1], device=DEVICE)).logits
        differences["mixed rows"] = max(compared(f"row {r} of task {task}", mixed[r], tensors[f"logits.{task}"][r])
                                        for r, task in enumerate(tasks))
    params = dict(model.named_parameters())
    output = run(model, inputs, 0)
    differences["encoder states"] = compared("encoder states", output.encoder_last_hidden_state,
                                             tensors["encoder_states"])
    differences["loss"] = compared("loss", output.loss, tensors["loss"])
    optimizer = torch.optim.SGD([params[n] for n in meta["trained"]], lr=meta["optimizer"]["lr"])
    losses = []
    for step, task in enumerate(meta["optimizer"]["tasks"]):
        loss = output.loss if step == 0 else run(model, inputs, tasks.index(task)).loss
        loss.backward()
        if step == 0:
            differences["grads"] = max(compared(f"grad {n}", params[n].grad, tensors[f"grad.{n}"])
                                       for n in meta["trained"])
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    differences["step losses"] = compared("step losses", torch.stack(losses), tensors["step_losses"])
    differences["after steps"] = max(compared(f"after {n}", params[n], tensors[f"after.{n}"]) for n in meta["trained"])
    print(f"\nparity hyperformer vs rabeehk/hyperformer {meta['commit'][:12]}: largest relative difference "
          f"{max(differences.values()):.2e} (" + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()) + ")")


@pytest.mark.parametrize("rows", [[1, 0], [0, 0]])
def test_a_row_reads_its_own_tasks_adapters_whatever_the_other_rows_are(rows):
    model, inputs, tensors, meta = ours()
    with torch.no_grad():
        logits = run(model, inputs, torch.tensor(rows, device=DEVICE)).logits
    for r, task in enumerate(rows):
        compared(f"row {r} of task {task}", logits[r], tensors[f"logits.{meta['tasks'][task]}"][r])
