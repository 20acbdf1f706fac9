"""Orthogonal fine-tuning: rotate the frozen weight by a learned (block-)orthogonal matrix (peft)."""

from __future__ import annotations

import contextlib

from bench.archs import unsupported_on_conv1d
from bench.methods.base import Method, register
from bench.methods.lora import QV_TARGETS
from bench.methods.peft_common import peft_build

_CONV1D = "peft's {} rotates nn.Linear weights; {{arch}}'s Conv1D layers are not supported"
_OFT = peft_build("OFTConfig")
_BOFT = peft_build("BOFTConfig")


@contextlib.contextmanager
def _butterfly_indices_on_the_cpu():
    """peft's BOFT layer computes its butterfly permutation's indices (in_features integers), then writes a 1 into
    its permutation matrix at each index it reads back (`perm_mat[i, idx] = 1`). A cell builds adapters on the CPU
    already (no device context), so nothing changes there; on the meta device (`estimate`, the dry-run) indices
    have no values to read, and the build failed (`Tensor.item() cannot be called on meta tensors`). Within the
    block the indices are computed on the CPU, for real; the matrix stays on the device the build is on."""
    import torch
    from peft.tuners.boft.layer import BOFTLayer

    permutation = BOFTLayer.block_butterfly_perm

    def on_the_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return permutation(*args, **kwargs)

    BOFTLayer.block_butterfly_perm = on_the_cpu
    try:
        yield
    finally:
        BOFTLayer.block_butterfly_perm = permutation


@contextlib.contextmanager
def _sizes_each_layer_divides(model, layer_class, config: dict, pair: tuple[str, str], peft_would: str):
    """Block size × blocks = a layer's input features, so the size asked (the nonzero of `pair`, the method's
    one_nonzero) must divide the in_features of every layer peft adapts. peft's OFT trains a nearby value where it
    does not (and only warns), so the record would name a size that did not train; peft's BOFT raises a ValueError
    in the cell. Unsupported here instead, naming the layer, its width and the valid values, before peft builds
    that layer: on the meta device too, so `estimate` and the dry-run say it before any cell runs. Checked where
    each layer is adapted (the layer class's update_layer, which peft's Linear calls), so the layers are peft's
    own choice of targets, however target_modules names them."""
    from bench.errors import Unsupported

    key = next(k for k in pair if config[k])
    value = config[key]
    names = {id(module): name for name, module in model.named_modules()}  # the layers peft will wrap, by name
    update = layer_class.update_layer

    def checked(layer, *args, **kwargs):
        width = layer.in_features
        if width % value:
            divisors = ", ".join(str(d) for d in range(1, width + 1) if width % d == 0)
            raise Unsupported(f"{key} = {value} does not divide the {width} input features of layer "
                              f"'{names.get(id(layer.get_base_layer()), '?')}' (block size × blocks = its input "
                              f"features; peft {peft_would}): valid values there are the divisors of {width}: "
                              f"{divisors}")
        return update(layer, *args, **kwargs)

    layer_class.update_layer = checked
    try:
        yield
    finally:
        layer_class.update_layer = update


def _oft(model, config, ctx):
    from peft.tuners.oft.layer import OFTLayer

    with _sizes_each_layer_divides(model, OFTLayer, config, ("oft_block_size", "r"),
                                   "would train a nearby value there instead"):
        return _OFT(model, config, ctx)


def _boft(model, config, ctx):
    from peft.tuners.boft.layer import BOFTLayer

    with _butterfly_indices_on_the_cpu(), _sizes_each_layer_divides(
            model, BOFTLayer, config, ("boft_block_size", "boft_block_num"), "refuses it"):
        adapted = _BOFT(model, config, ctx)
    _refuse_a_butterfly_peft_dropped(adapted.model, config)
    return adapted


def _refuse_a_butterfly_peft_dropped(model, config) -> None:
    """More than one butterfly factor takes peft's CUDA extension (fbd_cuda, built with nvcc and ninja): where it
    does not load, peft warns and builds one factor instead, so the cell would train another method than its
    record's config names. Unsupported here, not recorded as that other method; a machine with the extension
    runs it (environment: `--retry-failed` reruns the cell there)."""
    from bench.errors import Unsupported

    factor = config.get("boft_n_butterfly_factor", 1)
    if factor > 1 and any(getattr(m, "fbd_cuda_available", True) is False for m in model.modules()):
        raise Unsupported(f"boft_n_butterfly_factor {factor} needs peft's CUDA extension (fbd_cuda: a GPU, nvcc and "
                          "ninja), which did not load here; peft would build 1 butterfly factor instead",
                          environment=True)


_oft.peft_config_class = _OFT.peft_config_class
_boft.peft_config_class = _BOFT.peft_config_class

register(
    Method("oft", "reparameterized", "block-diagonal orthogonal rotation (Cayley) of q and v weights",
           "Qiu et al. 2023, Controlling Text-to-Image Diffusion by Orthogonal Finetuning", _oft,
           defaults={"oft_block_size": 32, "r": 0, "module_dropout": 0.0, "coft": False, "block_share": False},
           targets=QV_TARGETS, train={"lr": 1e-3}, mergeable=True, one_nonzero=(("oft_block_size", "r"),),
           unsupported=unsupported_on_conv1d(_CONV1D.format("OFT"))),
    Method("boft", "reparameterized", "butterfly-factorised orthogonal rotation of q and v weights",
           "Liu et al. 2024, Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization",
           _boft,
           defaults={"boft_block_size": 4, "boft_block_num": 0, "boft_n_butterfly_factor": 1, "boft_dropout": 0.0},
           targets=QV_TARGETS, train={"lr": 1e-3}, mergeable=True,
           one_nonzero=(("boft_block_size", "boft_block_num"),),
           unsupported=unsupported_on_conv1d(_CONV1D.format("BOFT"))),
)
