"""QLoRA: LoRA on every linear layer of a base model quantised to 4-bit NF4 (bitsandbytes + peft).

Quantisation needs CUDA and bitsandbytes; anywhere else the cell is recorded `unsupported` with the
reason. The frozen linear layers (task head and LM head excepted) become bitsandbytes Linear4bit
with double quantisation and bf16 compute, as in the paper; LoRA then adapts all of them.
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


def _quantise(model: nn.Module, keep: tuple[str, ...]) -> int:
    import bitsandbytes as bnb
    import torch
    from torch import nn

    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not isinstance(child, nn.Linear) or full.startswith(keep) or name == "lm_head":
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q.to("cuda"))  # moving to the GPU quantises the weight
            swapped += 1
    return swapped


def _qlora(model, config, ctx) -> Adapted:
    import torch

    if not torch.cuda.is_available():
        raise Unsupported("QLoRA quantises the base model with bitsandbytes, which needs a CUDA device",
                          environment=True)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise Unsupported("QLoRA needs bitsandbytes (pip install 'peft-bench[gpu]')", environment=True) from None
    import peft

    if not _quantise(model, tuple(ctx.bundle.head_modules)):
        raise Unsupported(f"{ctx.bundle.arch} has no nn.Linear layers to quantise")
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _LORA(model, config, ctx)


_qlora.peft_config_class = _LORA.peft_config_class

register(
    Method("qlora", "reparameterized", "LoRA on all linear layers of a 4-bit NF4 base (double quantisation)",
           "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs", _qlora,
           defaults={"r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
           train={"lr": 2e-4},
           unsupported=unsupported_on_conv1d("{arch}'s Conv1D layers are not nn.Linear; load it through "
                                             "transformers' BitsAndBytesConfig for 4-bit")),
)
