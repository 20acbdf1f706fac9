"""QLoRA: LoRA on every linear layer of a base model quantised to 4-bit NF4 (bitsandbytes + peft).

Quantisation needs CUDA and bitsandbytes; anywhere else the cell is recorded `unsupported` with the
reason. The frozen linear layers (task head and LM head excepted) become bitsandbytes Linear4bit
with double quantisation and bf16 compute, as in the paper; LoRA then adapts all of them. On the meta device
(`estimate`, `run --dry-run`) each becomes the twin of what bitsandbytes stores and runs on a GPU
(bench/layers/nf4_twin.py), so the estimate is of the CUDA path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.archs import unsupported_on_conv1d
from bench.errors import Unsupported
from bench.methods.base import Adapted, Method, register
from bench.methods.peft_common import peft_build

if TYPE_CHECKING:
    from torch import nn

_LORA = peft_build("LoraConfig")


def _quantised(child: nn.Linear, device) -> nn.Module:
    """`child` as a bitsandbytes 4-bit layer on `device` (on the meta device: its twin)."""
    import bitsandbytes as bnb
    import torch
    from torch import nn

    if device.type == "meta":
        from bench.layers.nf4_twin import Linear4bitTwin

        return Linear4bitTwin(child)
    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                          compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
    q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                 compress_statistics=True, module=q)  # as Linear4bit's own: q.quant_state kept
    if child.bias is not None:
        q.bias = nn.Parameter(child.bias.data, requires_grad=False)
    return q.to(device)  # moving to the device quantises the weight


def _quantise(model: nn.Module, keep: tuple[str, ...], device) -> int:
    """Every nn.Linear but the heads and the layers the model keeps in fp32 (T5's `wo`, whose input T5 casts
    to that layer's weight dtype) becomes a 4-bit layer on `device`; returns how many."""
    from torch import nn

    full_precision = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if (not isinstance(child, nn.Linear) or full.startswith(keep) or name == "lm_head"
                    or full_precision & set(full.split("."))):
                continue
            setattr(parent, name, _quantised(child, device))
            swapped += 1
    # as transformers' own 4-bit loading marks a model: peft then wraps these layers in its 4-bit LoRA layer
    # (which merges by dequantising), and transformers counts each packed weight as its two elements
    model.is_loaded_in_4bit = True
    return swapped


def quantising_device(ctx):
    """Where the 4-bit weights are made and live: the cell's device, which must be a GPU, or the meta device, where
    the estimate builds their twins. (The tests stand bitsandbytes' CPU backend in for it where there is none.)"""
    import torch

    device = torch.device(ctx.device)
    if device.type not in ("cuda", "meta"):
        raise Unsupported("QLoRA quantises the base model with bitsandbytes, which needs a CUDA device",
                          environment=True)
    return device


def _qlora(model, config, ctx) -> Adapted:
    device = quantising_device(ctx)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise Unsupported("QLoRA needs bitsandbytes (pip install 'peft-bench[gpu]')", environment=True) from None
    import peft

    if not _quantise(model, tuple(ctx.bundle.head_modules), device):
        raise Unsupported(f"{ctx.bundle.arch} has no nn.Linear layers to quantise")
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _LORA(model, config, ctx)


_qlora.peft_config_class = _LORA.peft_config_class

register(
    Method("qlora", "reparameterized", "LoRA on all linear layers of a 4-bit NF4 base (double quantisation)",
           "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs", _qlora,
           defaults={"r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
           train={"lr": 2e-4}, packages=("bitsandbytes",),
           unshardable="FSDP2 makes its 4-bit weights (bitsandbytes Params4bit) DTensors without their quantisation "
                       "state",
           # 2: peft's 4-bit LoRA layer, T5's wo kept in full precision, 4-bit weights counted whole
           revisions={"roberta": 2, "bert": 2, "t5": 2, "llama": 2},
           unsupported=unsupported_on_conv1d("{arch}'s Conv1D layers are not nn.Linear; load it through "
                                             "transformers' BitsAndBytesConfig for 4-bit")),
)
