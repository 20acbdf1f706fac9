"""Fixture from AdapterHub `adapters` for AdapterFusion (tests/test_parity_fusion.py compares
bench/methods/fusion.py with it).

On the tiny RoBERTa of gen_adapterhub_bottleneck.py (its base fixture `adapterhub-base-roberta`, the same weights
and batch): two SeqBnConfig() adapters, `a` and `b` (AdapterHub's default, our adapter-pfeiffer), their weights
drawn by AdapterHub and then moved by noise (their up projections start at zero, which would fuse nothing); a
Fuse("a", "b") layer under AdapterHub's default DynamicAdapterFusionConfig, trained with `train_adapter_fusion`
(the adapters frozen, the fusion layers and the head trained). The fusion's weights at AdapterHub's init are stored,
and then used moved by noise too (query and key start at N(0, 0.02²), which fuses the adapters near-uniformly).
At the weights used: logits, final hidden states, the task loss, the fusion regulariser
(`get_fusion_regularization_loss`, which AdapterHub's trainer adds to the loss), the gradient of every trained
parameter under loss + regulariser, and the parameters after SGD_STEPS plain SGD steps on it. Dropout is 0 and the
model in eval mode (the fusion's dropout is the model's attention dropout, 0 in the base config).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapters  # noqa: E402
from adapters import SeqBnConfig  # noqa: E402
from adapters.composition import Fuse  # noqa: E402
from adapters.configuration import DynamicAdapterFusionConfig  # noqa: E402
from common import save  # noqa: E402
from gen_adapterhub_bottleneck import SEED, SGD_LR, SGD_STEPS, base_model, batch, plain, run  # noqa: E402

ARCH = "roberta"
NAMES = ("a", "b")
NOISE = 0.3
OURS = "adapter_fusion"  # bench/methods/fusion.py: NAME


def our_name(reference: str) -> str:
    """AdapterHub's name -> ours: `<layer>.output.adapters.<a|b>.adapter_down.0|adapter_up` are our
    `<layer>.output.dense.adapter_fusion.adapters.<0|1>.down|up`, `<layer>.output.adapter_fusion_layer.a,b.<q|k|v>`
    our `<layer>.output.dense.adapter_fusion.fusion.<q|k|v>`; the head keeps its name."""
    adapter = re.fullmatch(r"(.*\.output)\.adapters\.(\w+)\.(adapter_down\.0|adapter_up)\.(\w+)", reference)
    if adapter:
        block, name, projection, leaf = adapter.groups()
        part = "down" if projection == "adapter_down.0" else "up"
        return f"{block}.dense.{OURS}.adapters.{NAMES.index(name)}.{part}.{leaf}"
    fusion = re.fullmatch(r"(.*\.output)\.adapter_fusion_layer\.[\w,]+\.(query|key|value)\.(\w+)", reference)
    if fusion:
        block, projection, leaf = fusion.groups()
        return f"{block}.dense.{OURS}.fusion.{projection}.{leaf}"
    return reference


def generate() -> None:
    model, config = base_model(ARCH)
    inputs = batch(config)
    adapters.init(model)
    torch.manual_seed(SEED + 1)
    for name in NAMES:
        model.add_adapter(name, config=SeqBnConfig())
    fuse = Fuse(*NAMES)
    model.add_adapter_fusion(fuse)  # the default: "dynamic"
    model.train_adapter_fusion(fuse)
    model.eval()
    named = dict(model.named_parameters())
    adapter_names = [n for n in named if ".adapters." in n]
    trained = {n: p for n, p in named.items() if p.requires_grad}
    fusion_names = [n for n in trained if ".adapter_fusion_layer." in n]
    assert adapter_names and fusion_names and not set(adapter_names) & set(trained)
    tensors = {f"init.{n}": named[n].detach().clone() for n in fusion_names}
    generator = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        for n in adapter_names + fusion_names:
            named[n].add_(NOISE * torch.randn(named[n].shape, generator=generator))
    tensors.update({f"adapter.{n}": named[n].detach().clone() for n in adapter_names})
    tensors.update({f"used.{n}": named[n].detach().clone() for n in fusion_names})
    tensors.update({f"head.{n}": p.detach().clone() for n, p in trained.items() if n.startswith("classifier.")})

    def loss_and_regularizer():
        logits, hidden, loss = run(model, inputs)
        return logits, hidden, loss, model.base_model.get_fusion_regularization_loss()

    logits, hidden, loss, regularizer = loss_and_regularizer()
    (loss + regularizer).backward()
    tensors.update(logits=logits, hidden=hidden, loss=loss, regularizer=regularizer)
    tensors.update({f"grad.{n}": p.grad for n, p in trained.items()})
    optimizer = torch.optim.SGD(trained.values(), lr=SGD_LR)
    losses = []
    for _ in range(SGD_STEPS):
        optimizer.zero_grad()
        _, _, step_loss, step_regularizer = loss_and_regularizer()
        (step_loss + step_regularizer).backward()
        optimizer.step()
        losses.append(step_loss.detach())
    tensors["step_losses"] = torch.stack(losses)
    tensors.update({f"stepped.{n}": p.detach().clone() for n, p in trained.items()})
    save(f"adapterhub-fusion-{ARCH}", tensors, {
        "reference": "AdapterHub adapters", "arch": ARCH, "method": "adapter-fusion", "adapters": list(NAMES),
        "adapter_config": plain(SeqBnConfig()), "fusion_config": plain(DynamicAdapterFusionConfig()),
        "name_map": {n: our_name(n) for n in [*adapter_names, *trained]},
        "trained": sorted(trained), "trained_count": sum(p.numel() for p in trained.values()),
        "fusion_count": sum(trained[n].numel() for n in fusion_names),
        "optimizer": {"name": "SGD", "lr": SGD_LR, "steps": SGD_STEPS, "momentum": 0, "weight_decay": 0,
                      "loss": "task loss + get_fusion_regularization_loss()"},
        "noise": NOISE, "seed": SEED, "base": f"adapterhub-base-{ARCH}",
        "what": "adapter.* the two task adapters (frozen), init.* the fusion at AdapterHub's init, used.* the fusion "
                "used (init + noise), head.* the head; logits, hidden, loss, regularizer and grad.* (of loss + "
                "regularizer) at used; stepped.* after the SGD steps from used",
    })


if __name__ == "__main__":
    generate()
