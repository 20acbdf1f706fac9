"""ProPETL fixtures from the authors' code (ChaosCodes/ProPETL, propetl-roberta/src/transformers/adapters), for
scripts/parity/gen_masks.py: modeling.py's GetSubnet, AdapterSubnet, LoraSubnet and Adapter, lora.py's LoRA and
Linear.forward, configuration.py's PfeifferConfig and LoRAConfig, compiled from the pinned checkout. They are wired
into transformers' RoBERTa as the fork wires them: one Adapter shared by every layer's output, run through that
layer's AdapterSubnet (AdapterLayer.adapter_stack / adapter_layer_forward) with PfeifferConfig's placement (it
reads LN(h + x), the same LayerNorm applied again to h + x + its output); a LoRA per query and value whose A and
B are layer 0's in every layer (run_glue.py's "share weights").
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import typing
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import get_activation

from common import save  # scripts/parity, on sys.path (gen_masks.py)
from masks_reference import SEED, build_model, compile_from, meta_of, reference_file

ADAPTER = "glue"  # the authors' adapter name: run_glue.py names it after the task
NOISE = 0.3  # added to the reference's init to get the weights used (LoRA's B starts at zero)
PROPETL = {  # the authors' scripts/run_adapter.sh and run_lora.sh; a smaller bottleneck and rank for size
    "propetl-adapter": dict(reduction_factor=8, sparsity=0.5, lr=1e-4, mask_lr=3e-3),
    "propetl-lora": dict(r=4, alpha=6, sparsity=0.1, lr=1e-4, mask_lr=3e-2),
}
ADAM_STEPS = 3
PLACEMENT = ("original_ln_before", "original_ln_after", "residual_before_ln", "adapter_residual_before_ln")


def propetl_classes() -> SimpleNamespace:
    folder = "propetl-roberta/src/transformers/adapters/"
    typed = {k: getattr(typing, k) for k in ("List", "Optional", "Union")}
    configs = compile_from(reference_file("propetl", folder + "configuration.py"),
                           ["AdapterConfigBase", "AdapterConfig", "PfeifferConfig", "LoRAConfig"],
                           {**typed, **{k: getattr(dataclasses, k) for k in dataclasses.__all__},
                            "Mapping": collections.abc.Mapping, "Collection": collections.abc.Collection})
    modules = compile_from(reference_file("propetl", folder + "modeling.py"),
                           ["Activation_Function_Class", "Adapter", "GetSubnet", "AdapterSubnet", "LoraSubnet"],
                           {"torch": torch, "nn": nn, "F": F, "autograd": torch.autograd, "math": math,
                            "get_activation": get_activation})
    compile_from(reference_file("propetl", folder + "lora.py"), ["LoRA"], modules)
    forward = compile_from(reference_file("propetl", folder + "lora.py"), ["Linear.forward"],
                           {"torch": torch, "F": F})["forward"]
    return SimpleNamespace(**{k: v for k, v in {**configs, **modules}.items() if isinstance(v, type)},
                           lora_linear_forward=forward)


def authors_output_forward(output, at_ffn_output: bool):
    """RobertaOutput with the shared adapter as the fork runs it (a single adapter, Stack): pre_forward,
    the layer's masks, forward_with_mask, post_forward (PfeifferConfig: LN(h + x + adapter(LN(h + x)))).
    `at_ffn_output`: the same modules where our revision 1 put them instead, on the FFN output projection h
    before dropout, residual and layer norm (LN(h + adapter(h) + x))."""
    def forward(hidden_states, input_tensor):
        adapter = output.adapters[ADAPTER]
        down_mask, up_mask = output.adapters_mask[ADAPTER]()
        if at_ffn_output:
            h = output.dense(hidden_states)
            h = adapter.forward_with_mask(h, down_mask, up_mask, residual_input=h)[0]
            return output.LayerNorm(output.dropout(h) + input_tensor)
        h = output.dropout(output.dense(hidden_states))
        hidden, _, residual = adapter.pre_forward(h, input_tensor, output.LayerNorm)
        out = adapter.forward_with_mask(hidden, down_mask, up_mask, residual_input=residual)[0]
        return adapter.post_forward(out, h, input_tensor, output.LayerNorm)
    return forward


class AuthorsLoRALinear(nn.Linear):
    """Stand-in for the fork's lora.Linear: the attributes its forward reads, one active adapter."""

    def get_active_setup(self, module_dict):
        return [ADAPTER]


def add_propetl(model, method: str, ref: SimpleNamespace) -> dict[str, str]:
    """The authors' ProPETL on `model` (weights as they initialise them, seeded); returns reference -> our name."""
    settings = PROPETL[method]
    layers = model.roberta.encoder.layer
    torch.manual_seed(SEED + 1)
    names = {}
    if method == "propetl-adapter":
        config = ref.PfeifferConfig(reduction_factor=settings["reduction_factor"])
        hidden = model.config.hidden_size
        bottleneck = int(hidden // settings["reduction_factor"])
        shared = ref.Adapter(ADAPTER, hidden, bottleneck, config)  # model_mixin._add_shared_adapter_weights
        for i, layer in enumerate(layers):
            layer.output.adapters = nn.ModuleDict({ADAPTER: shared})
            layer.output.adapters_mask = nn.ModuleDict(
                {ADAPTER: ref.AdapterSubnet(ADAPTER, hidden, bottleneck, settings["sparsity"])})
            prefix, ours = f"roberta.encoder.layer.{i}.output.", f"roberta.encoder.layer.{i}.output.dense.propetl."
            names[f"{prefix}adapters_mask.{ADAPTER}.down_mask"] = ours + "masks.down.scores"
            names[f"{prefix}adapters_mask.{ADAPTER}.up_mask"] = ours + "masks.up.scores"
        for theirs, ours in (("adapter_down.0", "down"), ("adapter_up", "up")):
            for kind in ("weight", "bias"):
                names[f"roberta.encoder.layer.0.output.adapters.{ADAPTER}.{theirs}.{kind}"] = \
                    f"propetl_adapter.{ours}.{kind}"
    else:
        config = ref.LoRAConfig(r=settings["r"], alpha=settings["alpha"], share_adapter=True)
        for i, layer in enumerate(layers):  # LoRALayer.add_shared_adapter: the layer's LoRA, then its masks
            for target in ("query", "value"):
                base = getattr(layer.attention.self, target)
                lora_linear = AuthorsLoRALinear(base.in_features, base.out_features)
                lora_linear.load_state_dict(base.state_dict())
                lora_linear.loras = nn.ModuleDict({ADAPTER: ref.LoRA((config.r, base.in_features),
                                                                     (base.out_features, config.r), config)})
                lora_linear.adapters_mask = nn.ModuleDict(
                    {ADAPTER: ref.LoraSubnet(lora_linear.loras[ADAPTER].lora_A.size(),
                                             lora_linear.loras[ADAPTER].lora_B.size(), settings["sparsity"])})
                lora_linear.merged, lora_linear.fan_in_fan_out = False, False
                lora_linear.forward = ref.lora_linear_forward.__get__(lora_linear)
                setattr(layer.attention.self, target, lora_linear)
                prefix = f"roberta.encoder.layer.{i}.attention.self.{target}."
                for mat in ("A", "B"):
                    names[f"{prefix}adapters_mask.{ADAPTER}.lora_{mat}_mask"] = \
                        f"{prefix}propetl.masks.{mat.lower()}.scores"
        for i, layer in enumerate(layers):  # run_glue.py's "share weights": layer 0's A and B everywhere
            for target in ("query", "value"):
                for mat in ("lora_A", "lora_B"):
                    setattr(getattr(layer.attention.self, target).loras[ADAPTER], mat,
                            getattr(getattr(layers[0].attention.self, target).loras[ADAPTER], mat))
                    if i == 0:
                        names[f"roberta.encoder.layer.0.attention.self.{target}.loras.{ADAPTER}.{mat}"] = \
                            f"propetl_lora_{target}.{mat[-1].lower()}"
    for p in model.parameters():  # model.train_adapter: the adapter, its masks and the head train
        p.requires_grad_(False)
    for n, p in model.named_parameters():
        if n in names or n.startswith("classifier."):
            p.requires_grad_(True)
            names.setdefault(n, n)
    return names


def propetl_fixture(method: str, ref: SimpleNamespace, base: str, inputs: dict) -> None:
    settings = PROPETL[method]
    model = build_model("roberta")
    names = add_propetl(model, method, ref)
    params = dict(model.named_parameters())
    method_params = [n for n in names if not n.startswith("classifier.")]
    tensors = {f"init.{n}": params[n].detach().clone() for n in method_params}
    torch.manual_seed(SEED + 2)
    with torch.no_grad():  # the weights used: init plus noise, so LoRA's B and the biases are not zero
        for n in method_params:
            if "_mask" not in n:
                params[n].add_(NOISE * torch.randn_like(params[n]) * params[n].abs().mean().clamp_min(0.1))
    tensors.update({f"used.{n}": params[n].detach().clone() for n in method_params})
    masks = {n: p for n, p in params.items() if "_mask" in n}
    tensors.update({f"mask.{n}": ref.GetSubnet.apply(p.detach().abs(), settings["sparsity"]).bool()
                    for n, p in masks.items()})
    if method == "propetl-adapter":  # revision 1's site first (logits only), then the authors' for the rest
        for layer in model.roberta.encoder.layer:
            layer.output.forward = authors_output_forward(layer.output, at_ffn_output=True)
        with torch.no_grad():
            tensors["logits_ffn_output_site"] = model(**inputs).logits
        for layer in model.roberta.encoder.layer:
            layer.output.forward = authors_output_forward(layer.output, at_ffn_output=False)
    out = model(**inputs)
    out.loss.backward()
    tensors.update({"logits": out.logits, "loss": out.loss})
    tensors.update({f"grad.{n}": params[n].grad for n in names})
    # The authors' optimizer groups (adapters/trainer.py): masks at mask_learning_rate; weight decay 0 here
    optimizer = torch.optim.AdamW([{"params": [p for n, p in params.items() if n in masks], "lr": settings["mask_lr"]},
                                   {"params": [p for n, p in params.items() if n in names and n not in masks]}],
                                  lr=settings["lr"], weight_decay=0.0)
    for _ in range(ADAM_STEPS):
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
    tensors.update({f"step.{n}": params[n] for n in names})
    tensors.update({f"mask_step.{n}": ref.GetSubnet.apply(p.detach().abs(), settings["sparsity"]).bool()
                    for n, p in masks.items()})
    with torch.no_grad():
        tensors["logits_step"] = model(**inputs).logits
    save(f"{method}-roberta", tensors, {
        **meta_of("roberta", base, "propetl"), "method": method, "settings": settings, "name_map": names,
        "steps": ADAM_STEPS, "trained_count": sum(params[n].numel() for n in names),
        "optimizer": f"torch AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0), {ADAM_STEPS} steps on the batch; "
                     "masks at mask_lr, the rest at lr (the authors' groups)",
        "transposed": sorted(n for n in names if n.endswith(("down_mask", "up_mask"))),
        # where the authors' adapter reads and writes (their PfeifferConfig's defaults)
        **({"placement": {k: getattr(ref.PfeifferConfig(), k) for k in PLACEMENT}} if method == "propetl-adapter"
           else {})})

