"""Reading parity fixtures (made by scripts/parity, from the reference implementations) and comparing with them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"


def load(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The fixture's tensors and its metadata (reference, version, pins, config, name map)."""
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    return tensors, json.loads((FIXTURES / f"{name}.json").read_text())


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max(max |theirs|, 1e-12): one number per tensor, the one docs/methods.md reports."""
    assert ours.shape == theirs.shape, f"shape {tuple(ours.shape)} != reference {tuple(theirs.shape)}"
    ours, theirs = ours.detach().double().cpu(), theirs.detach().double().cpu()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))


def assert_matches(what: str, ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> float:
    """Fails naming the tensor and the difference; returns the difference so a test can report the largest."""
    difference = relative_difference(ours, theirs)
    assert difference <= rtol, f"{what}: relative difference {difference:.3e} from the reference exceeds {rtol:.0e}"
    return difference
