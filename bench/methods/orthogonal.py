"""Orthogonal fine-tuning: rotate the frozen weight by a learned (block-)orthogonal matrix (peft)."""

from __future__ import annotations

import contextlib

from bench.archs import unsupported_on_conv1d
from bench.methods.base import Method, register
from bench.methods.lora import QV_TARGETS
from bench.methods.peft_common import peft_build

_CONV1D = "peft's {} rotates nn.Linear weights; {{arch}}'s Conv1D layers are not supported"
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


def _boft(model, config, ctx):
    with _butterfly_indices_on_the_cpu():
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


_boft.peft_config_class = _BOFT.peft_config_class

register(
    Method("oft", "reparameterized", "block-diagonal orthogonal rotation (Cayley) of q and v weights",
           "Qiu et al. 2023, Controlling Text-to-Image Diffusion by Orthogonal Finetuning", peft_build("OFTConfig"),
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
