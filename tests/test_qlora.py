"""QLoRA: which layers are quantised, how peft wraps them, how they are counted, and that a step and a merge work.

On CUDA it runs as in a cell. Elsewhere bitsandbytes' CPU backend stands in for the GPU: the method's
quantising device is the CPU."""

from __future__ import annotations

import pytest
import torch

from bench import methods
from bench.config import TrainConfig
from bench.methods.base import ApplyContext
from bench.tensors import count_params
from tests.adapting import token_batch

bnb = pytest.importorskip("bitsandbytes")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODELS = ["tiny-encoder", "tiny-t5", "tiny-llama"]


@pytest.fixture
def qlora(monkeypatch, tiny_bundle):
    """Apply QLoRA at its defaults to a fresh tiny model: (bundle, adapted, parameter elements before)."""
    if DEVICE == "cpu":
        from bench.methods import qlora as module

        monkeypatch.setattr(module, "quantising_device", lambda ctx: torch.device("cpu"))

    def apply(model_name: str):
        bundle = tiny_bundle(model_name, device=DEVICE)
        before = count_params(bundle.model)["total"]
        method = methods.get("qlora")
        adapted = method.apply(bundle.model, method.resolve({}, bundle.arch, str),
                               ApplyContext(bundle, TrainConfig(), 10, device=torch.device(DEVICE)))
        return bundle, adapted.model.to(DEVICE), adapted, before

    return apply


def batch_for(bundle) -> dict:
    batch = token_batch(rows=4, length=8, classes=bundle.spec.kind == "encoder")
    if bundle.spec.kind == "encoder-decoder":
        batch["decoder_input_ids"] = batch["labels"]
    return {k: v.to(DEVICE) for k, v in batch.items()}


@pytest.mark.parametrize("model_name", MODELS)
def test_quantised_layers_are_peft_4bit_lora_layers_and_counted_whole(qlora, model_name):
    from peft.tuners.lora.bnb import Linear4bit as Lora4bit

    bundle, model, adapted, before = qlora(model_name)
    keep = set(getattr(bundle.model, "_keep_in_fp32_modules", None) or ())
    quantised = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantised
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not isinstance(module, bnb.nn.Linear4bit):
            # what stays full precision: the heads, LoRA's own factors, and the layers the model keeps in fp32
            parts = set(name.split("."))
            kept = bool(parts & (keep | set(bundle.head_modules) | {"lm_head"})) or "lora_" in name
            assert kept, f"{name} was not quantised"
    wrappers = [m for m in model.modules() if isinstance(m, Lora4bit)]
    assert len(wrappers) == len(quantised)  # peft's 4-bit LoRA layer, which merges by dequantising
    if "wo" in keep:  # T5 casts wo's input to wo's weight dtype: a 4-bit wo would make it uint8
        assert not any("wo" in n.split(".") for n in quantised)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    counts = adapted.params()
    # each 4-bit weight counts the weights it stands for; peft keeps a frozen copy of a classifier's head
    head_copy = sum(p.numel() for n, p in model.named_parameters() if "original_module" in n)
    assert counts["total"] == before + lora + head_copy


def test_each_4bit_layer_holds_its_weights_quantisation_state(qlora):
    """As Linear4bit's own weight: the Params4bit names its module, which quantising gives the state too (what
    bitsandbytes' fix_4bit_weight_quant_state_from_module restores a weight's state from)."""
    _, model, _, _ = qlora("tiny-llama")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.module is m and m.quant_state is m.weight.quant_state is not None for m in layers)


def test_qlora_composed_with_bottleneck_adapters_builds_and_steps(monkeypatch, tiny_bundle):
    """The adapters were placed in the 4-bit layer's packed weight dtype (`nn.Module.to ... uint8`) and sized by its
    packed shape, on the meta device and in a real cell alike: they now take the layer's widths and its first
    floating-point parameter's dtype (peft's LoRA factors)."""
    from bench.tools.estimate import estimate

    name = "compose(qlora+adapter-houlsby)"
    assert estimate("tiny-llama", name, batch_size=2, seq_len=8)["memory"]["step_peak_bytes"] > 0
    if DEVICE == "cpu":  # bitsandbytes' CPU backend stands in for CUDA (not on the meta device: the estimate's)
        from bench.methods import qlora as module

        monkeypatch.setattr(module, "quantising_device", lambda ctx: torch.device("cpu"))
    bundle = tiny_bundle("tiny-llama", device=DEVICE)
    method = methods.for_cell(name)
    model = method.apply(bundle.model, method.resolve({}, bundle.arch, str),
                         ApplyContext(bundle, TrainConfig(), 10, device=torch.device(DEVICE))).model.to(DEVICE)
    model(**batch_for(bundle)).loss.backward()
    adapters = {n: p for n, p in model.named_parameters() if ".adapter." in n}
    assert adapters and all(p.dtype == torch.float32 and p.grad is not None for p in adapters.values())


def test_estimate_refuses_to_shard_a_4bit_base():
    """FSDP2 makes a Params4bit a DTensor without its quant_state: the estimate priced --shards 2 regardless."""
    from bench.errors import BadInput
    from bench.tools.estimate import estimate

    for method in ("qlora", "compose(qlora+bitfit)"):
        with pytest.raises(BadInput, match="cannot be sharded: (qlora: )?FSDP2") as refused:
            estimate("tiny-llama", method, batch_size=2, seq_len=8, shards=2)
        assert refused.value.where == "--shards"
    assert estimate("tiny-llama", "qlora", batch_size=2, seq_len=8, shards=1)["memory"]["step_peak_bytes"]


@pytest.mark.parametrize("model_name", MODELS)
def test_a_step_trains_only_lora_and_the_head_and_the_merged_copy_predicts(qlora, model_name):
    bundle, model, adapted, _ = qlora(model_name)
    batch = batch_for(bundle)
    model.train()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = model(**batch).loss
    assert loss.dtype.is_floating_point and torch.isfinite(loss)
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trained)
    model.eval()
    merged = adapted.merge()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        assert merged(**batch).logits.shape == model(**batch).logits.shape
