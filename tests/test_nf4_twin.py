"""QLoRA's estimate (bench/layers/nf4_twin.py): the twin stores what bitsandbytes stores, a real quantisation by its CPU
backend being the independent check; its params are a real QLoRA model's; its step holds the dequantised weights
of bitsandbytes' CUDA training path, in closed form."""

from __future__ import annotations

import pytest
import torch

from bench import methods
from bench.cell.measure import head_elements, method_params
from bench.cell.probe import LiveBytes
from bench.config import TrainConfig
from bench.methods.base import ApplyContext
from bench.tensors import count_params
from bench.tools.estimate import estimate
from tests.adapting import build_bundle

bnb = pytest.importorskip("bitsandbytes")
nf4_twin = pytest.importorskip("bench.layers.nf4_twin")
MODELS = ["tiny-encoder", "tiny-t5", "tiny-llama"]


def closed_form(out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """What NF4 with double quantisation keeps, written from the dimensions (the twin's docstring)."""
    n = out_features * in_features
    blocks = (n + 63) // 64
    return {"weight": (((n + 1) // 2, 1), torch.uint8), "absmax": ((blocks,), torch.uint8),
            "offset": ((), torch.float32), "code": ((16,), torch.float32),
            "nested_absmax": (((blocks + 255) // 256,), torch.float32), "nested_code": ((256,), torch.float32)}


def stored(layer) -> dict[str, torch.Tensor]:
    """A real bitsandbytes Linear4bit's tensors, under the twin's names."""
    state = layer.weight.quant_state
    return {"weight": layer.weight, "absmax": state.absmax, "offset": state.offset, "code": state.code,
            "nested_absmax": state.state2.absmax, "nested_code": state.state2.code}


def twin_tensors(twin) -> dict[str, torch.Tensor]:
    return {"weight": twin.weight, **dict(twin.named_buffers())}


def described(tensors: dict[str, torch.Tensor]) -> dict:
    return {name: (tuple(t.shape), t.dtype, t.nbytes) for name, t in tensors.items()}


def with_bytes(shapes: dict) -> dict:
    return {name: (shape, dtype, torch.Size(shape).numel() * dtype.itemsize) for name, (shape, dtype) in shapes.items()}


@pytest.mark.parametrize("out_features,in_features", [(9, 7), (200, 96), (64, 64), (3, 5000)])
def test_a_layer_stores_what_bitsandbytes_stores(out_features, in_features):
    """Odd element counts, a last block part-filled, one block, more absmax blocks than one nested block."""
    linear = torch.nn.Linear(in_features, out_features)
    real = bnb.nn.Linear4bit(in_features, out_features, compute_dtype=torch.bfloat16, compress_statistics=True,
                             quant_type="nf4")
    real.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4",
                                    compress_statistics=True)
    real = real.to("cpu")  # bitsandbytes' CPU backend quantises as its CUDA one: the same ops and shapes
    twin = nf4_twin.Linear4bitTwin(linear.to("meta"))
    assert described(stored(real)) == described(twin_tensors(twin)) == with_bytes(closed_form(out_features,
                                                                                               in_features))
    assert nf4_twin.stored_shapes(out_features, in_features) == closed_form(out_features, in_features)
    assert twin.weight.quant_state.shape == real.weight.quant_state.shape == (out_features, in_features)


def meta_qlora(model_name: str):
    """The model QLoRA makes on the meta device, as `estimate` builds it."""
    bundle = build_bundle(model_name, meta=True)
    method = methods.get("qlora")
    with torch.device("meta"):
        return method.apply(bundle.model, method.resolve({}, bundle.arch, str),
                            ApplyContext(bundle, TrainConfig(), 1, device="meta")).model


def real_qlora(monkeypatch, model_name: str):
    """(bundle, adapted, body) of QLoRA on a real tiny model, bitsandbytes' CPU backend quantising it."""
    from bench.methods import qlora as module

    bundle = build_bundle(model_name)
    body = count_params(bundle.model)["total"] - head_elements(bundle.model, bundle.head_modules)[0]
    method = methods.get("qlora")
    with monkeypatch.context() as patched:
        patched.setattr(module, "quantising_device", lambda ctx: torch.device("cpu"))
        adapted = method.apply(bundle.model, method.resolve({}, bundle.arch, str),
                               ApplyContext(bundle, TrainConfig(), 1, device=torch.device("cpu")))
    return bundle, adapted, body


@pytest.mark.parametrize("model_name", MODELS)
def test_the_meta_model_stores_what_the_quantised_model_stores(monkeypatch, model_name):
    _, adapted, _ = real_qlora(monkeypatch, model_name)
    from peft.tuners.lora.bnb import Linear4bit as Lora4bit

    real = {n: m for n, m in adapted.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    meta = meta_qlora(model_name)
    twins = {n: m for n, m in meta.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert real and real.keys() == twins.keys()
    wrapped = [m.base_layer for m in meta.modules() if isinstance(m, Lora4bit)]  # peft's 4-bit LoRA layer, as a cell's
    assert len(wrapped) == len(twins) and all(isinstance(m, nf4_twin.Linear4bitTwin) for m in wrapped)
    for name, layer in real.items():
        assert isinstance(twins[name], nf4_twin.Linear4bitTwin)
        assert described(stored(layer)) == described(twin_tensors(twins[name])) \
            == with_bytes(closed_form(layer.out_features, layer.in_features)), name


@pytest.mark.parametrize("model_name", MODELS)
def test_estimate_params_are_a_real_qlora_models(monkeypatch, model_name):
    """As a cell records them (bench/cell/instruments.py): counted on the adapted model, 4-bit weights by the weights
    they stand for; weights_bytes all parameters' bytes, the packed weights' included."""
    bundle, adapted, body = real_qlora(monkeypatch, model_name)
    real = count_params(adapted.model)
    real.update(method_params(real, head_elements(adapted.model, bundle.head_modules)[1], body))
    result = estimate(model_name, "qlora", batch_size=2, seq_len=8)
    assert result["params"] == real
    parameters = {id(p): p for p in adapted.model.parameters()}.values()
    assert result["memory"]["weights_bytes"] == sum(p.nbytes for p in parameters)
    assert result["memory"]["trainable_bytes"] == sum(p.nbytes for p in parameters if p.requires_grad)
    state = [t for m in adapted.model.modules() if isinstance(m, bnb.nn.Linear4bit)
             for name, t in stored(m).items() if name != "weight"]
    assert result["quantised"]["state_bytes"] == sum(t.nbytes for t in state)


def one_layer_step_peak(weights_dtype: torch.dtype, rows: int, out_features: int, in_features: int,
                        twin: bool) -> int:
    """The most bytes alive at once in one layer's forward and backward on fake tensors, for a bf16 input that needs
    a gradient: the twin of a `weights_dtype` linear layer, or a frozen bf16 nn.Linear."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.tools.fake_pass import _fake_weights

    linear = torch.nn.Linear(in_features, out_features, bias=False, device="meta", dtype=weights_dtype)
    layer = nf4_twin.Linear4bitTwin(linear) if twin else linear.to(torch.bfloat16).requires_grad_(False)
    mode = FakeTensorMode()
    with _fake_weights(layer, mode), mode:
        x = torch.empty(rows, in_features, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.empty(rows, out_features, dtype=torch.bfloat16)
        with LiveBytes() as live:
            layer(x).backward(grad)
        return live.peak


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
def test_the_step_holds_the_dequantised_weights_in_closed_form(weights_dtype):
    """bf16 output y (2 R N), input gradient (2 R K); absmax dequantised in fp32 (4 b, b = n / 64). Forward, as CUDA's
    _dequant_linear_fallback: absmax and absmax + offset (8 b), both kept while the weight in bf16 (2 n) and y are
    made (8 b + 2 n + y). Backward, beside y: absmax and the weight in its quantisation dtype (4 b + s n), then that
    and its bf16 copy where the dtypes differ (6 n), then the copy and the input's gradient (2 n + 2 R K)."""
    rows, out_features, in_features = 2, 128, 128
    n, b, y, grad_x = out_features * in_features, out_features * in_features // 64, 2 * rows * out_features, \
        2 * rows * in_features
    plain = one_layer_step_peak(weights_dtype, rows, out_features, in_features, twin=False)
    assert plain == y + grad_x
    size = weights_dtype.itemsize
    copy = 2 * n if weights_dtype != torch.bfloat16 else 0
    expected = max(8 * b + 2 * n + y, y + 4 * b + size * n, y + size * n + copy, y + 2 * n + grad_x)
    assert one_layer_step_peak(weights_dtype, rows, out_features, in_features, twin=True) == expected
    assert expected == y + (6 * n if weights_dtype == torch.float32 else 2 * n + 8 * b)  # which moment is the peak


@pytest.mark.parametrize("weights_dtype", [torch.float32, torch.bfloat16])
def test_the_forward_alone_holds_cudas_fallback_transient(weights_dtype):
    """The forward on its own (no backward to set the peak): CUDA's _dequant_linear_fallback holds the fp32 absmax
    twice (8 b, b = n / 64) and the weight dequantised in bf16 (2 n) as it makes the bf16 output y (2 R N), whatever
    the weight's dtype (the forward dequantises in the input's). A forward that dequantised nothing (the fused kernel)
    would hold y alone."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.tools.fake_pass import _fake_weights

    rows, out_features, in_features = 3, 256, 128
    n, b, y = out_features * in_features, out_features * in_features // 64, 2 * rows * out_features
    layer = nf4_twin.Linear4bitTwin(torch.nn.Linear(in_features, out_features, bias=False, device="meta",
                                                    dtype=weights_dtype))
    mode = FakeTensorMode()
    with _fake_weights(layer, mode), mode:
        x = torch.empty(rows, in_features, dtype=torch.bfloat16, requires_grad=True)
        with LiveBytes() as live:
            layer(x)
    assert live.peak == 8 * b + 2 * n + y


def test_the_estimate_says_it_is_of_the_cuda_path_and_when_the_fused_kernel_may_run():
    """The note names the rows the twins' forwards multiplied (gemm_4bit's M, what CUDA chooses its kernel by), not
    batch x seq_len: an input's every leading dimension counts, and only forwards that ran."""
    few = estimate("tiny-llama", "qlora", batch_size=2, seq_len=8)
    many = estimate("tiny-llama", "qlora", batch_size=4, seq_len=512)
    assert "CUDA path" in few["quantised"]["path"] and few["quantised"] == many["quantised"]
    assert any("multiply 16 rows, at most 1536" in reason and "above the GPU's peak" in reason
               for reason in few["memory"]["not_modelled"])
    assert not any("fused kernel" in reason for reason in many["memory"]["not_modelled"])
    assert estimate("tiny-llama", "lora", batch_size=2, seq_len=8)["quantised"] is None
    layer = nf4_twin.Linear4bitTwin(torch.nn.Linear(64, 32, device="meta"))
    layer(torch.empty(3, 5, 64, device="meta"))
    layer(torch.empty(7, 64, device="meta"))
    assert layer.rows_multiplied == {15, 7}


def test_the_estimate_says_when_the_installed_bitsandbytes_is_not_the_twinned_release(monkeypatch):
    """pyproject allows bitsandbytes >= 0.45; the twin is 0.50's CUDA path, another release's may differ."""
    assert not any("installed one" in reason for reason in
                   estimate("tiny-llama", "qlora", batch_size=4, seq_len=512)["memory"]["not_modelled"])
    monkeypatch.setattr(bnb, "__version__", "0.45.5")
    reasons = estimate("tiny-llama", "qlora", batch_size=4, seq_len=512)["memory"]["not_modelled"]
    assert any("bitsandbytes 0.50's" in reason and "installed one is 0.45.5" in reason for reason in reasons)


@pytest.mark.parametrize("model_name", MODELS)
def test_the_step_counts_the_products_of_bf16_lora_with_qlora_settings(model_name):
    """Dequantising is elementwise (0 FLOPs, as the probe counts every elementwise operator); the products are those
    of LoRA with QLoRA's settings on a bf16 base."""
    settings = dict(methods.get("qlora").defaults)
    lora = estimate(model_name, "lora", batch_size=2, seq_len=8, dtype="bf16", settings=settings)
    qlora = estimate(model_name, "qlora", batch_size=2, seq_len=8)
    assert qlora["flops"] == lora["flops"] and qlora["params"]["trainable"] == lora["params"]["trainable"]


def test_a_dry_run_prices_the_qlora_cell(write_suite, tmp_path, capsys):
    """It was `train FLOPs unknown: ... needs a CUDA device`."""
    from bench.cli import main

    path = write_suite("name: q\nmethods: [qlora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\n"
                       "train: {max_steps: 10, batch_size: 8, max_length: 16}\n")
    assert main(["run", "--suite", str(path), "--dry-run", "--tflops", "2", "--results", str(tmp_path / "r")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "method=qlora " in line)
    step = estimate("tiny-encoder", "qlora", 8, 16)["flops"]["train_step"]
    assert f"train FLOPs {10 * step:.3g} (10 steps)" in line


@pytest.mark.parametrize("model_name", ["tiny-encoder", "tiny-llama"])
def test_a_real_qlora_step_counts_the_products_the_estimate_counts(monkeypatch, model_name):
    """bitsandbytes' 4-bit product is one operator (gemm_4bit), which FlopCounterMode's table lacks: a QLoRA cell's
    probe counted none of its forward products, and its evaluation none at all, where the estimate's twin counts
    a linear layer's (bench.cell.probe.custom_flops). Its backward's product is a plain matmul, counted by both."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.cell.probe import custom_flops, instrumented_step
    from bench.models import REGISTRY
    from bench.tools.fake_pass import fake_step

    rows, length = 3, 10
    bundle, adapted, _ = real_qlora(monkeypatch, model_name)
    model = adapted.model.train()
    ids = torch.randint(5, 100, (rows, length))
    labels = torch.zeros(rows, dtype=torch.long) if REGISTRY[model_name].kind == "encoder" else ids
    real = instrumented_step(model, {"input_ids": ids, "labels": labels})
    fake = fake_step(meta_qlora(model_name), REGISTRY[model_name].kind, rows, length)
    assert (real.forward_flops, real.backward_flops) == (fake.forward_flops, fake.backward_flops)
    with FlopCounterMode(display=False, custom_mapping=custom_flops()) as counter, torch.no_grad():
        model(input_ids=ids)
    assert counter.get_total_flops() == fake.forward_flops
