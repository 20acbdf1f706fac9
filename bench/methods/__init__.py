"""The method registry: each module lists its methods; one line here adds a module."""

from __future__ import annotations

from bench.errors import unknown
from bench.methods import (adapters, baselines, compacter, fisher, fourierft, hybrid, ia3, lora, lycoris,
                           orthogonal, partial, prompts, qlora, vera)
from bench.methods.base import FAMILIES, Method

REGISTRY: dict[str, Method] = {
    m.name: m
    for module in (baselines, adapters, prompts, ia3, partial, fisher, lora, qlora, vera, lycoris, orthogonal,
                   fourierft, hybrid, compacter)
    for m in module.METHODS
}


def get(name: str, where: str | None = None) -> Method:
    if name not in REGISTRY:
        raise unknown("method", name, REGISTRY, where)
    return REGISTRY[name]


__all__ = ["FAMILIES", "Method", "REGISTRY", "get"]
