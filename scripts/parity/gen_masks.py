"""Fixtures from the authors' code for the mask-based methods (tests/test_parity_masks.py compares
bench/methods/propetl.py and bench/methods/fisher.py with them).

None of the references is a package, and none can be imported here whole, so each is read from a checkout at
its pinned commit (env var, else .cache/parity/<name>, cloned when missing) and the classes and functions named
below are compiled from its files as they are (`compile_from`: the files' own imports, a fork of transformers
4.x or `datasets`' removed load_metric, would fail beside transformers 4.57.6):
- ProPETL (ChaosCodes/ProPETL, propetl-roberta/src/transformers/adapters): modeling.py's GetSubnet,
  AdapterSubnet, LoraSubnet and Adapter, lora.py's LoRA and Linear.forward, configuration.py's PfeifferConfig
  and LoRAConfig. They are wired into transformers' RoBERTa as the fork wires them: one Adapter shared by every
  layer's output, run through that layer's AdapterSubnet (AdapterLayer.adapter_stack / adapter_layer_forward);
  a LoRA per query and value whose A and B are layer 0's in every layer (run_glue.py's "share weights").
- FISH (varunnair18/FISH, run_glue_sparse_update.py): calculate_the_importance_label and create_mask_gradient,
  called as they are; SparseUpdateTrainer.training_step's masking (gradient times mask after backward, before
  the trainer clips) is the one loop in `fishmask_fixture` that multiplies gradients by the masks.
- Child-Tuning (PKUnlp-icler/ChildTuning): ChildTuningDtrainer.calculate_fisher from ChildTuningD.py, called on a
  stand-in trainer; ChildTuningAdamW from ChildTuningOptimizer.py (mode ChildTuning-D), imported.
Dropout is 0 (calculate_fisher switches to train mode, as its authors run it), so all is deterministic. The
model weights and inputs of each architecture go into one base fixture (`<family>-base-<arch>`) that the method
fixtures share.
"""

from __future__ import annotations

import __future__
import ast
import collections.abc
import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from transformers import BertConfig, BertForSequenceClassification, RobertaConfig  # noqa: E402
from transformers import RobertaForSequenceClassification  # noqa: E402
from transformers.activations import get_activation  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# name -> (env var naming a checkout, repository, pinned commit)
REFERENCES = {
    "propetl": ("PARITY_PROPETL_DIR", "https://github.com/ChaosCodes/ProPETL",
                "1c08f19cea90cc3e39bba2b0f7c9c5587fa1da09"),
    "fish": ("PARITY_FISH_DIR", "https://github.com/varunnair18/FISH", "b5bff1e66559f7c865e2f45c1488ae13e193dae2"),
    "childtuning": ("PARITY_CHILDTUNING_DIR", "https://github.com/PKUnlp-icler/ChildTuning",
                    "dff3888b890339bf37e1a676b43f35b4667fb295"),
}
SEED = 0
DIMS = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
            initializer_range=0.1, num_labels=2)
ARCHS = {
    "roberta": (RobertaConfig, RobertaForSequenceClassification,
                dict(max_position_embeddings=20, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    # smaller: the Fisher fixtures store a score per entry of the model
    "bert": (BertConfig, BertForSequenceClassification,
             dict(max_position_embeddings=16, pad_token_id=0, hidden_size=16, intermediate_size=32)),
}
ADAPTER = "glue"  # the authors' adapter name: run_glue.py names it after the task
NOISE = 0.3  # added to the reference's init to get the weights used (LoRA's B starts at zero)
PROPETL = {  # the authors' scripts/run_adapter.sh and run_lora.sh; a smaller bottleneck and rank for size
    "propetl-adapter": dict(reduction_factor=8, sparsity=0.5, lr=1e-4, mask_lr=3e-3),
    "propetl-lora": dict(r=4, alpha=6, sparsity=0.1, lr=1e-4, mask_lr=3e-2),
}
ADAM_STEPS = 3
FISH = dict(examples=12, keep_ratio=0.02, lr=1e-3, max_grad_norm=1.0, steps=2)
# max_grad_norm small enough that calculate_fisher's per-tensor clipping binds on this model; eps so small that
# ChildTuningAdamW (eps on the uncorrected √v) and torch's AdamW (eps on the corrected one) agree
CHILD = dict(examples=16, batch_size=4, reserve_p=0.3, lr=1e-3, max_grad_norm=0.01, eps=1e-20, steps=2)


def reference_file(name: str, relative: str) -> Path:
    """A file of the reference's checkout, which must be at the pinned commit with that file unchanged."""
    env, url, commit = REFERENCES[name]
    path = Path(os.environ.get(env) or ROOT / ".cache" / "parity" / name)
    if not path.is_dir():
        subprocess.run(["git", "clone", "--quiet", url, str(path)], check=True)
        subprocess.run(["git", "-C", str(path), "checkout", "--quiet", commit], check=True)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "-C", str(path), "diff", "--quiet", "HEAD", "--", relative]).returncode
    if head != commit or changed:
        sys.exit(f"gen_masks: {path} must be {url} at {commit} with {relative} unchanged (HEAD {head})")
    return path / relative


def compile_from(path: Path, names: list[str], namespace: dict) -> dict:
    """Defines in `namespace` the named top-level classes and functions of a reference file, compiled from its
    text; `Class.method` defines that method as a plain function (called with a stand-in `self`)."""
    top = {n.name: n for n in ast.parse(path.read_text(), str(path)).body
           if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    nodes = []
    for name in names:
        owner, _, method = name.partition(".")
        node = top[owner]
        nodes.append(next(n for n in node.body if getattr(n, "name", None) == method) if method else node)
    code = compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)
    return namespace


def build_model(arch: str) -> nn.Module:
    config_class, model_class, extra = ARCHS[arch]
    torch.manual_seed(SEED)
    return model_class(config_class(**{**DIMS, **extra}, attn_implementation="eager")).eval()


def meta_of(arch: str, name: str, commit_of: str) -> dict:
    config_class, model_class, extra = ARCHS[arch]
    env, url, commit = REFERENCES[commit_of]
    return {"reference": f"{url} at {commit}", "commit": commit, "arch": arch, "model_class": model_class.__name__,
            "config_class": config_class.__name__, "config": {**DIMS, **extra}, "base": name}


def save_base(name: str, arch: str, model: nn.Module, inputs: dict, commit_of: str) -> None:
    with torch.no_grad():
        logits = model(**inputs).logits
    save(name, {**{f"base.{k}": v for k, v in model.state_dict().items()},
                **{f"input.{k}": v for k, v in inputs.items()}, "logits_base": logits},
         meta_of(arch, name, commit_of))


# ProPETL

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


def authors_output_forward(output, our_site: bool):
    """RobertaOutput with the shared adapter as the fork runs it (a single adapter, Stack): pre_forward,
    the layer's masks, forward_with_mask, post_forward. `our_site`: the same modules where ours sit instead,
    on the FFN output projection before dropout, residual and layer norm."""
    def forward(hidden_states, input_tensor):
        adapter = output.adapters[ADAPTER]
        down_mask, up_mask = output.adapters_mask[ADAPTER]()
        if our_site:
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
    if method == "propetl-adapter":
        for layer in model.roberta.encoder.layer:
            layer.output.forward = authors_output_forward(layer.output, our_site=True)
        with torch.no_grad():
            tensors["logits_our_site"] = model(**inputs).logits
        for layer in model.roberta.encoder.layer:
            layer.output.forward = authors_output_forward(layer.output, our_site=False)
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
        "transposed": sorted(n for n in names if n.endswith(("down_mask", "up_mask")))})


# FISH mask and Child-Tuning_D

def bert_rows(count: int, seed: int) -> list[dict]:
    """Examples of varying length (4 to 12 tokens) and their labels, as a dataset's rows."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        length = 4 + (i * 5) % 9
        ids = torch.randint(3, DIMS["vocab_size"], (length,), generator=generator)
        rows.append({"input_ids": ids, "labels": torch.tensor(i % 2), "idx": i})
    return rows


def padded(rows: list[dict], with_idx: bool = True) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])], mask[i, :len(r["input_ids"])] = r["input_ids"], 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([r["labels"] for r in rows])}
    return {**batch, "idx": torch.tensor([r["idx"] for r in rows])} if with_idx else batch


def recording_collator(order: list[list[int]]):
    def collate(rows):
        order.append([r["idx"] for r in rows])
        return padded(rows)
    return collate


def selected(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return tensor.detach().flatten()[mask.flatten().bool()]


def fishmask_fixture(base: str, rows: list[dict]) -> None:
    namespace = compile_from(
        reference_file("fish", "transformers/examples/text-classification/run_glue_sparse_update.py"),
        ["calculate_the_importance_label", "create_mask_gradient"], {"torch": torch, "DataLoader": DataLoader})
    model = build_model("bert")
    order: list[list[int]] = []
    torch.manual_seed(SEED + 3)
    masks = namespace["create_mask_gradient"](model, rows, recording_collator(order), FISH["examples"],
                                              FISH["keep_ratio"], "label", "square")
    torch.manual_seed(SEED + 3)  # the same shuffled order again, for the importance itself
    again: list[list[int]] = []
    loader = DataLoader(rows, batch_size=1, collate_fn=recording_collator(again), shuffle=True)
    fisher = namespace["calculate_the_importance_label"](model, loader, FISH["examples"], "cpu", "square")
    assert again == order, "the importance must be computed on the examples the mask was"
    params = dict(model.named_parameters())
    body = [n for n in params if "classifier" not in n]
    tensors = {f"fisher.{n}": fisher[n] for n in body}
    tensors.update({f"mask.{n}": masks[n].bool() for n in body})
    kept = int(sum(masks[n].sum() for n in body))
    batch = padded(rows, with_idx=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FISH["lr"], weight_decay=0.0)
    for step in range(FISH["steps"]):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        for n, p in params.items():  # SparseUpdateTrainer.training_step: grad * mask, every parameter
            p.grad.data.copy_(p.grad.data * masks[n].data)
        torch.nn.utils.clip_grad_norm_(model.parameters(), FISH["max_grad_norm"])  # then the trainer clips
        if step == 0:
            tensors.update({f"grad.{n}": selected(p.grad, masks[n]) for n, p in params.items()})
        optimizer.step()
    tensors.update({f"step.{n}": selected(p, masks[n]) for n, p in params.items()})
    total = sum(p.numel() for p in params.values())
    head = sum(p.numel() for n, p in params.items() if "classifier" in n)
    save("fishmask-bert", tensors, {
        **meta_of("bert", base, "fish"), "method": "fishmask", "settings": FISH, "order": order,
        "kept": kept, "total": total, "head": head, "body": total - head,
        "mask_method": "label-square (run_sparse_updates.sh), batch size 1, all examples",
        "optimizer": f"torch AdamW (lr {FISH['lr']}, eps 1e-8, weight decay 0) on all examples padded as one batch, "
                     f"gradients masked then clipped to {FISH['max_grad_norm']}, {FISH['steps']} steps"})


class PercentileRecorder:
    """numpy for calculate_fisher, recording what np.percentile is given (the Fisher of every layer entry)."""

    def __init__(self):
        self.seen = None

    def __getattr__(self, name):
        return getattr(np, name)

    def percentile(self, values, q):
        self.seen = values.copy()
        self.polar = np.percentile(values, q)
        return self.polar


def child_tuning_fixture(base: str, rows: list[dict]) -> None:
    from tqdm import tqdm

    numpy = PercentileRecorder()
    calculate_fisher = compile_from(reference_file("childtuning", "ChildTuningD.py"),
                                    ["ChildTuningDtrainer.calculate_fisher"],
                                    {"torch": torch, "np": numpy, "DataLoader": DataLoader, "tqdm": tqdm})
    optimizer_file = reference_file("childtuning", "ChildTuningOptimizer.py")
    sys.path.insert(0, str(optimizer_file.parent))
    from ChildTuningOptimizer import ChildTuningAdamW

    model = build_model("bert")
    order: list[list[int]] = []
    trainer = SimpleNamespace(
        model=model, train_dataset=rows, data_collator=recording_collator(order), reserve_p=CHILD["reserve_p"],
        _prepare_inputs=lambda inputs: inputs,
        args=SimpleNamespace(per_device_train_batch_size=CHILD["batch_size"], dataloader_drop_last=False,
                             dataloader_num_workers=0, dataloader_pin_memory=False,
                             max_grad_norm=CHILD["max_grad_norm"]))
    torch.manual_seed(SEED + 4)
    by_param = calculate_fisher["calculate_fisher"](trainer)
    model.eval()
    params = dict(model.named_parameters())
    name_of = {id(p): n for n, p in params.items()}
    masks = {name_of[id(p)]: m for p, m in by_param.items()}
    layer_names = list(masks)
    sizes = [params[n].numel() for n in layer_names]
    fisher = torch.from_numpy(numpy.seen).split(sizes)
    tensors = {f"fisher.{n}": f.view_as(params[n]) for n, f in zip(layer_names, fisher)}
    tensors.update({f"mask.{n}": m for n, m in masks.items()})
    clipped = 0  # (batch, tensor) gradients calculate_fisher clipped: their norm exceeds max_grad_norm
    for batch in order:
        model.zero_grad()
        model(**padded([rows[i] for i in batch], with_idx=False)).loss.backward()
        clipped += sum(int(params[n].grad.norm() > CHILD["max_grad_norm"]) for n in layer_names)
    no_decay = ["bias", "LayerNorm.weight"]  # the authors' create_optimizer_and_scheduler; weight decay 0 here
    optimizer = ChildTuningAdamW(
        [{"params": [p for n, p in params.items() if not any(nd in n for nd in no_decay)], "weight_decay": 0.0},
         {"params": [p for n, p in params.items() if any(nd in n for nd in no_decay)], "weight_decay": 0.0}],
        mode="ChildTuning-D", lr=CHILD["lr"], eps=CHILD["eps"])
    optimizer.set_gradient_mask(by_param)
    batch = padded(rows, with_idx=False)
    model.train()
    for step in range(CHILD["steps"]):
        model.zero_grad()
        model(**batch).loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CHILD["max_grad_norm"])  # the trainer's clip
        optimizer.step()  # masks the layers' gradients in place, then AdamW
        if step == 0:
            full_norm = float(norm)
            tensors.update({f"grad.{n}": selected(p.grad, masks[n]) if n in masks else p.grad
                            for n, p in params.items()})
    tensors.update({f"step.{n}": selected(p, masks[n]) if n in masks else p for n, p in params.items()})
    kept = int(sum(m.sum() for m in masks.values()))
    save("child-tuning-bert", tensors, {
        **meta_of("bert", base, "childtuning"), "method": "child-tuning", "settings": CHILD, "order": order,
        "kept": kept, "layer_entries": sum(sizes), "polar": float(numpy.polar), "layer_params": layer_names,
        "clipped_in_fisher": {"clipped": clipped, "of": len(order) * len(layer_names)},
        "gradient_norm_step0": full_norm,
        "optimizer": f"ChildTuningAdamW (mode ChildTuning-D, lr {CHILD['lr']}, eps {CHILD['eps']}, weight decay 0) "
                     f"on all examples padded as one batch, after the trainer's clip of the whole gradient to "
                     f"{CHILD['max_grad_norm']}, {CHILD['steps']} steps"})


def main() -> None:
    ids = torch.tensor([[0, 5, 9, 13, 17, 21, 25, 2], [0, 6, 10, 14, 18, 2, 1, 1],
                        [0, 7, 11, 15, 19, 23, 27, 2], [0, 8, 12, 16, 2, 1, 1, 1]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 1).long(), "labels": torch.tensor([0, 1, 1, 0])}
    save_base("propetl-base-roberta", "roberta", build_model("roberta"), inputs, "propetl")
    ref = propetl_classes()
    for method in PROPETL:
        propetl_fixture(method, ref, "propetl-base-roberta", inputs)
    rows = bert_rows(max(FISH["examples"], CHILD["examples"]), SEED)
    save_base("fisher-base-bert", "bert", build_model("bert"), padded(rows, with_idx=False), "fish")
    fishmask_fixture("fisher-base-bert", rows[:FISH["examples"]])
    child_tuning_fixture("fisher-base-bert", rows[:CHILD["examples"]])


if __name__ == "__main__":
    main()
