"""Parity fixtures from AdapterHub `adapters` for prefix tuning, MAM, UniPELT, and (IA)³ / LoRA (a cross-check of
the peft-based methods): tests/test_parity_composite.py compares our methods with them.

Runs in .venv-parity (`make parity`). One small RoBERTa (random init, fixed seed, eager attention, dropout 0) is
stored once as `adapterhub-composite-base-roberta` (its head is every fixture's head at init); each method's fixture
holds its input, the reference's method weights at init and as used (perturbed: up projections and LoRA B start at
zero, (IA)³ at one, so outputs would equal the base model's), logits, last hidden state, loss, the gradient of
every trained parameter, the parameters after SGD steps (UniPELT also its logits and loss with every gate weight at
zero), and in its JSON the reference config, our method and overrides, and the name map (reference name -> ours).

Reference settings are chosen so that both compute the same function where AdapterHub has an option for it; the
remaining differences are stated in the test (and in the meta's `differences`).
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402  (scripts/parity is not a package; make_fixtures runs this file by path)

SEED = 0
BASE_FIXTURE = "adapterhub-composite-base-roberta"  # adapterhub-base-<arch> is the bottleneck helper's
ADAPTER = "parity"
MODEL_CONFIG = {"vocab_size": 24, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 32, "max_position_embeddings": 16, "type_vocab_size": 1, "pad_token_id": 1,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "num_labels": 2}
ATTENTION = "eager"  # AdapterHub's prefix code patches BERT/RoBERTa's eager and sdpa attention; ours wraps eager
OPTIMIZER = {"name": "SGD", "lr": 0.05, "momentum": 0.9, "steps": 3}  # same batch every step
PREFIX_LENGTH, PREFIX_MID = 4, 8
LORA_R = 2
MAM_BOTTLENECK = 8
PERTURB_STD = 0.2  # added to every trained tensor but the head after init (the head is random already)


def base_model():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(SEED)
    model = RobertaForSequenceClassification(RobertaConfig(**MODEL_CONFIG, attn_implementation=ATTENTION))
    return model.eval()


def batch() -> dict[str, torch.Tensor]:
    """Three rows, the last padded (RoBERTa's pad id 1): masks and position ids must treat it alike."""
    ids = torch.tensor([[0, 5, 9, 13, 7, 21, 2], [0, 11, 4, 4, 18, 6, 2], [0, 15, 8, 2, 1, 1, 1]])
    return {"input_ids": ids, "attention_mask": (ids != 1).long(), "labels": torch.tensor([1, 0, 1])}


def reference_configs() -> dict[str, tuple]:
    """fixture suffix -> (AdapterHub config, our method, our overrides, name map function, differences)."""
    from adapters import IA3Config, LoRAConfig, MAMConfig, ParBnConfig, PrefixTuningConfig, UniPELTConfig

    hidden = MODEL_CONFIG["hidden_size"]
    prefix = dict(prefix_length=PREFIX_LENGTH, bottleneck_size=PREFIX_MID)
    return {
        "prefix-tuning": (PrefixTuningConfig(**prefix), "prefix-tuning",
                          {"num_virtual_tokens": PREFIX_LENGTH, "encoder_hidden_size": PREFIX_MID},
                          ["default prefix length: ours 20, AdapterHub 30"]),
        "mam-adapter": (MAMConfig(PrefixTuningConfig(**prefix), ParBnConfig(reduction_factor=hidden // MAM_BOTTLENECK)),
                        "mam-adapter", {"prefix_length": PREFIX_LENGTH, "prefix_mid_dim": PREFIX_MID,
                                        "bottleneck_dim": MAM_BOTTLENECK},
                        ["default bottleneck: ours 512 (He et al.), AdapterHub hidden/2 (384 on a base model)"]),
        # UniPELTConfig's own LoRA, LoRAConfig(r=8, alpha=2): alpha != r, so a gate times alpha/r would show; and its
        # own adapter, SeqBnConfig(reduction_factor=16): it reads LN(h + x), the layer norm applied again after it
        "unipelt": (UniPELTConfig(PrefixTuningConfig(**prefix, shared_gating=False)), "unipelt",
                    {"lora_r": 8, "prefix_length": PREFIX_LENGTH, "prefix_mid_dim": PREFIX_MID,
                     "reduction_factor": 16},
                    ["gates: AdapterHub mean over all tokens of sigmoid(W x + b), per example; ours sigmoid per "
                     "token (LoRA, adapter) and sigmoid(W . mean over real tokens) for the prefix",
                     "prefix gate: AdapterHub shares one gate for keys and values by default (shared_gating)"]),
        "ia3": (IA3Config(), "ia3",
                {"target_modules": r".*layer\.\d+\.(attention\.self\.(key|value)|intermediate\.dense)",
                 "feedforward_modules": []},
                ["ours by default scales the FFN output projection's input (after the activation), AdapterHub the "
                 "intermediate projection's output (before it)"]),
        "lora": (LoRAConfig(r=LORA_R, alpha=2 * LORA_R), "lora", {"r": LORA_R, "lora_alpha": 2 * LORA_R},
                 ["default alpha: ours 16 at r=8 (scaling 2), AdapterHub 8 (scaling 1)"]),
    }


def our_name(method: str, name: str) -> str:
    """Our parameter name for an AdapterHub parameter name (after the base model's)."""
    peft_based = method in ("ia3", "lora")
    if name.startswith("classifier."):
        head = "classifier.modules_to_save.default." + name.removeprefix("classifier.")
        return "base_model.model." + head if peft_based else name
    if ".prefix_tunings." in name:  # one MLP for all layers: AdapterHub's pool lives under layer 0
        tail = name.split(".self_prefix.")[1]
        return "bench_prefix_bank." + tail.replace("wte.", "embedding.").replace("control_trans.", "mlp.")
    layer = name.split(".loras.")[0].split(".prefix_tuning.")[0].split(".adapters.")[0]
    if ".prefix_gates." in name:
        return f"{layer}.bench_prefix_gate.{name.rsplit('.', 1)[1]}"
    if ".adapters." in name:
        part = name.split(f".adapters.{ADAPTER}.")[1]
        part = part.replace("adapter_down.0.", "down.").replace("adapter_up.", "up.")
        return f"{layer}.dense.{'gated_adapter' if method == 'unipelt' else 'parallel_adapter'}.{part}"
    part = name.split(f".loras.{ADAPTER}.")[1]
    if method == "unipelt":
        part = {"lora_A": "a.weight", "lora_B": "b.weight"}.get(part, part)
        return f"{layer}.gated_lora.{part}"
    if method == "ia3":
        return f"base_model.model.{layer}.ia3_l.default"
    return f"base_model.model.{layer}.{part}.default.weight"


def perturb(model, trained: list[str]) -> None:
    """Every trained tensor but the head moves off its init, so no branch is vacuous (zero up projections)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name in trained:
            if not name.startswith("classifier."):
                tensor = parameters[name]
                tensor.add_(torch.randn(tensor.shape, generator=generator) * PERTURB_STD)


def run(model, inputs: dict, trained: list[str]) -> dict[str, torch.Tensor]:
    out = model(**inputs, output_hidden_states=True)
    out.loss.backward()
    parameters = dict(model.named_parameters())
    found = {"logits": out.logits, "loss": out.loss.reshape(1), "last_hidden": out.hidden_states[-1]}
    found |= {f"grad.{n}": parameters[n].grad.clone() for n in trained}
    model.zero_grad()
    return found


def optimise(model, inputs: dict, trained: list[str]) -> dict[str, torch.Tensor]:
    parameters = dict(model.named_parameters())
    optimizer = torch.optim.SGD([parameters[n] for n in trained], lr=OPTIMIZER["lr"], momentum=OPTIMIZER["momentum"])
    for _ in range(OPTIMIZER["steps"]):
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
    return {f"stepped.{n}": parameters[n].detach().clone() for n in trained}


def gate_weights(trained: list[str]) -> list[str]:
    """UniPELT's gate weights (not biases): zeroed, each gate is sigmoid(b) in every formulation."""
    return [n for n in trained if n.endswith("weight") and (".gate." in n or ".prefix_gates." in n)]


def build_reference(base_state: dict, config):
    import adapters

    model = base_model()
    model.load_state_dict(base_state)
    adapters.init(model)
    torch.manual_seed(SEED)
    model.add_adapter(ADAPTER, config=config)
    model.train_adapter(ADAPTER)  # freezes the model, trains the adapter; this head stays trainable
    model.set_active_adapters(ADAPTER)
    return model.eval()


def main() -> None:
    base = base_model()
    base_state = {n: p.detach().clone() for n, p in base.named_parameters()}
    meta_common = {"reference": "adapters", "reference_version": metadata.version("adapters"),
                   "model_class": "RobertaForSequenceClassification", "arch": "roberta",
                   "model_config": MODEL_CONFIG, "attention": ATTENTION, "seed": SEED}
    save(BASE_FIXTURE, base_state, {**meta_common, "what": "base weights of the adapterhub-* composite fixtures"})
    inputs = batch()
    for method, (config, ours, overrides, differences) in reference_configs().items():
        model = build_reference(base_state, config)
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        parameters = dict(model.named_parameters())
        method_only = [n for n in trained if not n.startswith("classifier.")]  # the head's init is the base's
        tensors = {f"init.{n}": parameters[n].detach().clone() for n in method_only}
        perturb(model, trained)
        tensors |= {f"used.{n}": parameters[n].detach().clone() for n in method_only}
        tensors |= {k: v for k, v in inputs.items()}
        tensors |= run(model, inputs, trained)
        if method == "unipelt":
            with torch.no_grad():
                for name in gate_weights(trained):
                    parameters[name].zero_()
                weightless = model(**inputs)
            tensors |= {"gates_weightless.logits": weightless.logits,
                        "gates_weightless.loss": weightless.loss.reshape(1)}
            for name in gate_weights(trained):  # back to the state the optimisation starts from
                parameters[name].data.copy_(tensors[f"used.{name}"])
        tensors |= optimise(model, inputs, trained)
        name_map = {n: our_name(method, n) for n in trained}
        meta = {**meta_common, "base_fixture": BASE_FIXTURE, "method": ours, "overrides": overrides,
                "reference_config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
                "name_map": name_map, "trained": trained,
                "trained_count": sum(parameters[n].numel() for n in trained), "optimizer": OPTIMIZER,
                "perturb_std": PERTURB_STD, "differences": differences,
                "gate_weights": gate_weights(trained) if method == "unipelt" else []}
        path = save(f"adapterhub-{method}-roberta", tensors, meta)
        print(f"  {path.name}: {len(trained)} trained tensors, {meta['trained_count']} parameters, "
              f"loss {tensors['loss'].item():.6f}")


if __name__ == "__main__":
    main()
