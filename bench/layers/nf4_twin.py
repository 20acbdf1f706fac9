"""QLoRA's 4-bit layer as bitsandbytes (0.50) stores and runs it on a GPU, for `estimate` on the meta device.

bitsandbytes quantises a weight only when it is moved to a device it has kernels for, so the estimate, which builds
the model on the meta device, gets this twin in place of each Linear4bit the cell makes (bench/methods/qlora.py).
It is a bitsandbytes Linear4bit (peft wraps it in its own 4-bit LoRA layer exactly as the cell's), holding what
`Params4bit._quantize` leaves on the GPU for NF4 with double quantisation (functional.quantize_4bit with
compress_statistics, then quantize_blockwise of the absmax in blocks of 256), for a weight of n = out x in elements:

- the weight, a Params4bit: uint8, ((n + 1) // 2, 1), two 4-bit codes a byte;
- `absmax`: uint8, ceil(n / 64): each 64-weight block's absolute maximum, less their mean, 8-bit quantised;
- `offset`: fp32, a scalar: that mean; `code`: fp32, 16: the NF4 values;
- `nested_absmax`: fp32, ceil(ceil(n / 64) / 256): the absolute maxima of 256-value blocks of `absmax`;
- `nested_code`: fp32, 256: the dynamic 8-bit map `absmax` is quantised with (a copy per layer).

The weight is a parameter (counted in params.total by the weights it stands for, bench.tensors.elements, and in
weights_bytes by its bytes, as the cell's); the quantisation state is buffers, which no params or weights figure
counts (a cell's device holds it among device_other_bytes). tests/test_nf4_twin.py checks every tensor against a
real quantisation by bitsandbytes' CPU backend and against these closed forms.

The forward is bitsandbytes' CUDA training path: Linear4bit casts the input to its compute dtype (bf16); matmul_4bit
runs MatMul4Bit where the input or bias needs a gradient (else the same product without an autograd node), whose
forward calls the gemm_4bit op and keeps the packed weight and quantisation state (no new tensor). On CUDA,
gemm_4bit with more than FUSED_MAX_ROWS rows (every training batch of B x L > 1536 tokens) runs its fallback
(backends/cuda/ops.py, _dequant_linear_fallback): the absmax dequantised to fp32 (4 ceil(n / 64) bytes), plus the
offset (as many again; both kept until the function returns), the weight dequantised in the input's dtype (2n bytes
in bf16), then F.linear; all freed when the product is done. Backward computes the input's gradient with the
weight dequantised again (functional.dequantize_4bit: absmax to fp32 with the offset added in place, the weight in
its quantisation dtype, the original weight's, then `.to` the gradient's dtype, a copy where they differ) and none
for the weight or the bias, which QLoRA freezes.
The twin runs those very operators (bitsandbytes' own fake kernels give their outputs on the fake pass), so the fake
step's peak holds the transients as the GPU's does. With at most FUSED_MAX_ROWS rows, CUDA may run its fused kernel
instead, which allocates only the output: the twin keeps the rows each of its forwards multiplied
(`rows_multiplied`), and `estimate` says where some are that few (its prediction may then be above the GPU's peak
by one layer's forward transient). FLOPs: the products are F.linear and matmul, counted as any (2 n per row each
way, as bf16 LoRA's frozen linear layer); dequantising is elementwise, which the FLOP counter, like for every
elementwise operator, counts as 0.
"""

from __future__ import annotations

import bitsandbytes as bnb
import bitsandbytes.functional as bnb_functional
import torch
import torch.nn.functional as F
from torch import nn

BLOCKSIZE = 64  # quantize_4bit's default, the weight's blocks
NESTED_BLOCKSIZE = 256  # quantize_4bit's double quantisation of the absmax
FUSED_MAX_ROWS = 1536  # backends/cuda/ops.py _gemm_4bit_custom_max_m: past it gemm_4bit always dequantises
TWINNED_RELEASE = "0.50"  # the bitsandbytes release whose path the twin was read from (others: estimate says so)


def stored_shapes(out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of each tensor bitsandbytes keeps for an NF4, double-quantised out x in weight."""
    n = out_features * in_features
    blocks = -(n // -BLOCKSIZE)
    return {"weight": (((n + 1) // 2, 1), torch.uint8), "absmax": ((blocks,), torch.uint8),
            "offset": ((), torch.float32), "code": ((16,), torch.float32),
            "nested_absmax": ((-(blocks // -NESTED_BLOCKSIZE),), torch.float32),
            "nested_code": ((256,), torch.float32)}


class _MatMul4BitOnCuda(torch.autograd.Function):
    """bitsandbytes' MatMul4Bit as CUDA runs it for a training batch (the module's docstring)."""

    @staticmethod
    def forward(ctx, A, B, bias, state):
        # _dequant_linear_fallback line for line: absmax_dq stays alive beside absmax + offset until the product ends
        nested = state.state2
        absmax_dq = torch.empty_like(state.absmax, dtype=torch.float32)
        torch.ops.bitsandbytes.dequantize_blockwise.out(state.absmax, nested.absmax, nested.code, nested.blocksize,
                                                        torch.float32, out=absmax_dq)
        absmax = absmax_dq + state.offset
        weight = torch.ops.bitsandbytes.dequantize_4bit.default(B, absmax, state.blocksize, state.quant_type,
                                                                list(state.shape), A.dtype)
        ctx.state, ctx.B = state, B  # as MatMul4Bit keeps them: attributes, no saved tensor
        return F.linear(A, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):  # QLoRA's weight and bias are frozen: only the input's gradient
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        weight = bnb_functional.dequantize_4bit(ctx.B, ctx.state).to(grad_output.dtype)
        return torch.matmul(grad_output, weight), None, None, None


class Linear4bitTwin(bnb.nn.Linear4bit):
    """A Linear4bit on the meta device holding what bitsandbytes stores for `linear` (stored_shapes), whose forward
    allocates what its CUDA training path does (the module's docstring)."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16):
        meta = torch.device("meta")
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device=meta)
        shapes = stored_shapes(linear.out_features, linear.in_features)
        for name, (shape, dtype) in shapes.items():
            if name != "weight":
                self.register_buffer(name, torch.empty(shape, dtype=dtype, device=meta))
        self.weights_dtype = linear.weight.dtype  # what quantize_4bit records as the state's dtype
        shape, dtype = shapes["weight"]
        self.weight = bnb.nn.Params4bit(torch.empty(shape, dtype=dtype, device=meta), requires_grad=False,
                                        quant_state=self.nf4_state(), blocksize=BLOCKSIZE, compress_statistics=True,
                                        quant_type="nf4", module=self, bnb_quantized=True)
        if linear.bias is not None:
            self.bias = nn.Parameter(torch.empty_like(linear.bias, device=meta), requires_grad=False)
        self.rows_multiplied: set[int] = set()  # the rows of every input the forward was given (FUSED_MAX_ROWS)

    def nf4_state(self) -> bnb_functional.QuantState:
        """The QuantState of the buffers as they are now (the fake pass swaps them for fakes)."""
        nested = bnb_functional.QuantState(absmax=self.nested_absmax, code=self.nested_code,
                                           blocksize=NESTED_BLOCKSIZE, dtype=torch.float32)
        return bnb_functional.QuantState(absmax=self.absmax, shape=torch.Size([self.out_features, self.in_features]),
                                         code=self.code, blocksize=BLOCKSIZE, quant_type="nf4",
                                         dtype=self.weights_dtype, offset=self.offset, state2=nested)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_multiplied.add(x.numel() // x.shape[-1])  # gemm_4bit's M: what chooses CUDA's kernel
        inp_dtype = x.dtype
        x = x.to(self.compute_dtype)
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:  # as Linear4bit: kept in the compute dtype from then on
            bias.data = bias.data.to(x.dtype)
        return _MatMul4BitOnCuda.apply(x, self.weight, bias, self.nf4_state()).to(inp_dtype)
