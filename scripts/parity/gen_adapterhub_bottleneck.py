"""Fixtures from AdapterHub `adapters` for the bottleneck adapter methods and Compacter
(tests/test_parity_bottleneck.py compares bench/methods/adapters.py and compacter.py with them).

Per architecture one base fixture (`adapterhub-base-<arch>`: the model's weights, a fixed batch, the base logits),
shared by that architecture's method fixtures (`adapterhub-<method>-<arch>`): the reference's method weights at its
own init and as used (init plus noise, so up projections are not zero and parity is not vacuous), logits, final
hidden states and loss at both, the gradient of every trained parameter, and the trained parameters after
SGD_STEPS plain SGD steps. Dropout is 0 and the model is in eval mode, so everything is deterministic.

The reference is configured as our methods are where its config has the option:
- adapter-houlsby = DoubleSeqBnConfig (swish, 16). AdapterHub trains no layer norm; ours trains them (Houlsby et
  al. do), so the generator unfreezes the model's LayerNorms by hand and stores which those are.
- adapter-pfeiffer = SeqBnConfig(), AdapterHub's default, on every architecture of ours it supports: post-LN
  (RoBERTa, BERT) the adapter reads LN(h + x) and the same LayerNorm is applied again to h + x + adapter; pre-LN
  (GPT-2, LLaMA, T5) it reads the residual stream after the FFN's add. The logits of SeqBnConfig(
  original_ln_before=False) with the same weights are stored too (`logits_old_placement`): the adapter reading
  the FFN output h before residual and norm, our revision 1 (after_residual=False).
- adapter-parallel = ParBnConfig(reduction_factor=16) (its default is 2; ours is 16), scaling 4.0, ReLU.
- compacter = CompacterConfig(reduction_factor=8): its bottleneck is int(hidden // factor) and must divide by
  phm_dim, so hidden 32 needs 8 (ours rounds up to a multiple of n instead); the test sets ours to 8 as well.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

import adapters  # noqa: E402
from adapters import CompacterConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, GPT2Config  # noqa: E402
from transformers import GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification  # noqa: E402
from transformers import RobertaConfig, RobertaForSequenceClassification, T5Config  # noqa: E402
from transformers import T5ForSequenceClassification  # noqa: E402

ADAPTER = "parity"
SEED = 0
SGD_LR, SGD_STEPS = 0.1, 2
NOISE = 0.3  # added to the reference's init to get the weights used (up projections start near zero)
DIMS = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
            initializer_range=0.1, num_labels=2)
# pre-LN architectures: the same sizes in their configs' words; pad 0 (the heads of GPT-2 and LLaMA look for it;
# no row has one), T5 ends every row with its eos (its classification head reads it)
PRE_LN = dict(vocab_size=32, num_labels=2, pad_token_id=0)
ARCHS = {
    "roberta": (RobertaConfig, RobertaForSequenceClassification, {**DIMS, **dict(
        max_position_embeddings=20, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)}),
    "bert": (BertConfig, BertForSequenceClassification, {**DIMS, **dict(max_position_embeddings=16, pad_token_id=0)}),
    "gpt2": (GPT2Config, GPT2ForSequenceClassification, {**PRE_LN, **dict(
        n_embd=32, n_layer=2, n_head=2, n_inner=64, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, initializer_range=0.1)}),
    "llama": (LlamaConfig, LlamaForSequenceClassification, {**PRE_LN, **dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
        max_position_embeddings=16, initializer_range=0.1)}),
    "t5": (T5Config, T5ForSequenceClassification, {**PRE_LN, **dict(
        d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=2, dropout_rate=0.0,
        classifier_dropout=0.0,
        eos_token_id=1, decoder_start_token_id=0, feed_forward_proj="relu")}),
}
BATCH, LENGTH = 2, 8

# method -> (reference config, our method, our overrides, our module name, train the layer norms)
METHODS = {
    "houlsby": (DoubleSeqBnConfig(), "adapter-houlsby", {}, "adapter", True),
    "pfeiffer": (SeqBnConfig(), "adapter-pfeiffer", {}, "adapter", False),
    "parallel": (ParBnConfig(reduction_factor=16), "adapter-parallel", {}, "parallel_adapter", False),
    "compacter": (CompacterConfig(reduction_factor=8), "compacter", {"reduction_factor": 8}, "compacter", False),
}
# BERT shares RoBERTa's modules and our sites: Houlsby (both sites and the layer norms) and Pfeiffer check the
# names there; the pre-LN architectures check where Pfeiffer's adapter goes on them
WHICH = {"roberta": ("houlsby", "pfeiffer", "parallel", "compacter"), "bert": ("houlsby", "pfeiffer"),
         "gpt2": ("pfeiffer",), "llama": ("pfeiffer",), "t5": ("pfeiffer",)}
# the module AdapterHub's FFN adapter hangs under (its output adapters) -> the one ours is a child of
OUTPUT_ADAPTER_OWNER = {"gpt2": (r"(.*\.h\.\d+)\.output_adapters", "mlp.c_proj"),
                        "llama": (r"(.*\.layers\.\d+)\.output_adapters", "mlp.down_proj"),
                        "t5": (r"(.*\.layer\.\d+)", "DenseReluDense.wo")}
PHM_NAMES = {"W_left": "s", "W_right": "t", "b": "bias"}


def is_norm(name: str) -> bool:
    return "layernorm" in name.lower() or "layer_norm" in name or ".ln_" in name or name.endswith("norm.weight")


def base_model(arch: str):
    config_class, model_class, settings = ARCHS[arch]
    config = config_class(**settings)
    torch.manual_seed(SEED)
    model = model_class(config).eval()
    with torch.no_grad():  # layer norms away from 1 and 0, so loading them is tested too
        for name, p in model.named_parameters():
            if is_norm(name):
                p.add_(0.1 * torch.randn_like(p))
    return model, config


def batch(config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    # ids from 3 up: never a pad, bos or eos id, so RoBERTa's position ids count every token
    ids = torch.randint(3, config.vocab_size, (BATCH, LENGTH), generator=generator)
    if config.model_type == "t5":
        ids[:, -1] = config.eos_token_id
    # one class for both rows: the head bias's gradient is then about -1, not the difference of two near-equal
    # probabilities, which fp32's rounding of the logits (1e-7) would put 1e-5 apart relative (as it did)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([1, 1])}


def our_name(reference: str, module: str, arch: str) -> str:
    """AdapterHub's parameter name -> ours: its `adapters.<name>` child of attention.output / output holds what
    our `<module>` child of that block's dense layer holds (pre-LN: of the FFN output projection of the layer
    whose output adapters hold it); Compacter's shared rule is ours on the model."""
    if reference.endswith(f"shared_parameters.{ADAPTER}.phm_rule"):
        return "compacter_factors.a"
    owner, projection_name = OUTPUT_ADAPTER_OWNER.get(arch, (r"(.*\.(?:attention\.output|output))", "dense"))
    match = re.fullmatch(rf"{owner}\.adapters\.{ADAPTER}\.(adapter_down\.0|adapter_up)\.(\w+)", reference)
    if not match:
        return reference  # the classifier head and the layer norms keep their transformers names
    block, projection, leaf = match.groups()
    part = "down" if projection == "adapter_down.0" else "up"
    return f"{block}.{projection_name}.{module}.{part}.{PHM_NAMES.get(leaf, leaf)}"


def run(model, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = model(**inputs, output_hidden_states=True)
    hidden = out.decoder_hidden_states if "decoder_hidden_states" in out else out.hidden_states  # T5's: decoder's
    return out.logits, hidden[-1], out.loss


def generate(arch: str) -> None:
    model, config = base_model(arch)
    inputs = batch(config)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        base_logits, base_hidden, base_loss = run(model, inputs)
    save(f"adapterhub-base-{arch}", {**{f"base.{n}": p for n, p in base.items()}, **inputs,
                                     "logits": base_logits, "hidden": base_hidden, "loss": base_loss},
         {"reference": "transformers", "arch": arch, "model_class": type(model).__name__,
          "config": ARCHS[arch][2], "seed": SEED,
          "what": "base weights (HF names, the same in transformers 4.57 and 5), the batch, base logits/loss"})
    for method in WHICH[arch]:
        generate_method(arch, method, inputs)


def plain(reference_config) -> dict:
    return {k: v for k, v in reference_config.to_dict().items() if not callable(v)}


def reference_logits(arch: str, reference_config, state: dict, inputs: dict) -> torch.Tensor:
    model, _ = base_model(arch)
    adapters.init(model)
    model.add_adapter(ADAPTER, config=reference_config)
    model.set_active_adapters(ADAPTER)
    model.load_state_dict(state)
    with torch.no_grad():
        return run(model.eval(), inputs)[0]


def generate_method(arch: str, method: str, inputs: dict) -> None:
    reference_config, ours, overrides, module, train_norms = METHODS[method]
    model, _ = base_model(arch)
    adapters.init(model)
    torch.manual_seed(SEED + 1)
    model.add_adapter(ADAPTER, config=reference_config)
    model.train_adapter(ADAPTER)
    model.eval()
    reference_trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    if train_norms:  # ours trains the layer norms as Houlsby et al.; AdapterHub has no option for it
        for name, p in model.named_parameters():
            if is_norm(name):
                p.requires_grad_(True)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    added = [n for n in trained if n in reference_trained and not n.startswith("classifier.")]
    tensors = {f"init.{n}": trained[n].detach().clone() for n in added}
    with torch.no_grad():
        tensors["logits_init"], _, _ = run(model, inputs)
        generator = torch.Generator().manual_seed(SEED + 2)
        for n in added:  # the weights as used: the reference's init plus noise (its up projections are ~0)
            trained[n].add_(NOISE * torch.randn(trained[n].shape, generator=generator))
    tensors.update({f"used.{n}": trained[n].detach().clone() for n in added})
    logits, hidden, loss = run(model, inputs)
    loss.backward()
    tensors.update(logits=logits, hidden=hidden, loss=loss)
    tensors.update({f"grad.{n}": p.grad for n, p in trained.items()})
    if method == "pfeiffer":  # the adapter on the FFN output before residual and norm (our revision 1)
        tensors["logits_old_placement"] = reference_logits(arch, SeqBnConfig(original_ln_before=False),
                                                           model.state_dict(), inputs)
    optimizer = torch.optim.SGD(trained.values(), lr=SGD_LR)
    losses = []
    for _ in range(SGD_STEPS):
        optimizer.zero_grad()
        step_loss = run(model, inputs)[2]
        step_loss.backward()
        optimizer.step()
        losses.append(step_loss.detach())
    tensors["step_losses"] = torch.stack(losses)
    tensors.update({f"stepped.{n}": p.detach().clone() for n, p in trained.items()})
    save(f"adapterhub-{method}-{arch}", tensors, {
        "reference": "AdapterHub adapters", "arch": arch, "method": ours, "overrides": overrides,
        "reference_config": plain(reference_config),
        "reference_config_class": type(reference_config).__name__,
        "reference_defaults": plain(type(reference_config)()),
        "name_map": {n: our_name(n, module, arch) for n in trained},
        "reference_trained": reference_trained, "norms_unfrozen_by_hand": sorted(set(trained) - set(reference_trained)),
        "trained_count": sum(p.numel() for p in trained.values()),
        "reference_trained_count": sum(p.numel() for n, p in trained.items() if n in reference_trained),
        "optimizer": {"name": "SGD", "lr": SGD_LR, "steps": SGD_STEPS, "momentum": 0, "weight_decay": 0},
        "noise": NOISE, "seed": SEED, "base": f"adapterhub-base-{arch}",
        "what": "init.* the reference's init, used.* the weights used (init + noise); logits, hidden, loss, grad.* "
                "at used; stepped.* after the SGD steps from used; logits_init at init",
    })


if __name__ == "__main__":
    for architecture in ARCHS:
        generate(architecture)
