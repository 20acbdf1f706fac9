"""Measurements against independent computations."""

import torch
from safetensors.torch import save

from bench.measure import PeakMemory, count_params, stored_size


def test_tied_weights_count_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "other": torch.nn.Linear(4, 2)})
    model["other"].weight.requires_grad_(False)
    counts = count_params(model)
    assert counts["total"] == 10 * 4 + 4 * 2 + 2
    assert counts["trainable"] == 10 * 4 + 2
    assert counts["trainable_pct"] == 100 * 42 / 50


def test_stored_size_is_the_safetensors_file():
    a, b = torch.randn(3, 5), torch.randn(7)
    state = {"a": a, "b": b, "tied": a}
    out = stored_size(state)
    assert out["stored"] == 15 + 7
    assert out["stored_bytes"] == len(save({"a": a, "b": b}))


def test_peak_memory_window_sees_an_allocation():
    with PeakMemory("cpu") as outer:
        pass
    with PeakMemory("cpu") as peak:
        block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
        del block
    assert peak.source == "cpu_peak_rss_bytes"
    assert peak.peak_bytes - outer.peak_bytes >= 60 * 2 ** 20
