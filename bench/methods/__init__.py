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


def register(*new: Method) -> None:
    """Add methods to the registry: how a module outside the package (a suite's `method_modules`)
    contributes its methods when it is imported."""
    for method in new:
        known = REGISTRY.get(method.name)
        if known is not None and _definition(known) != _definition(method):
            raise ValueError(f"a method named '{method.name}' is already registered")
        REGISTRY[method.name] = method


def _definition(method: Method) -> tuple:
    """What identifies a method's definition, so one module imported under two names registers once."""
    return method.family, method.description, method.paper, method.build.__qualname__


def import_modules(names, where=None) -> None:
    """Import each named module (it registers its methods); a module that cannot be imported is BadInput."""
    import importlib

    from bench.errors import BadInput

    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise BadInput(f"cannot import method module '{name}': {e}", where(i) if where else None) from None


def get(name: str, where: str | None = None) -> Method:
    if name not in REGISTRY:
        raise unknown("method", name, REGISTRY, where)
    return REGISTRY[name]


__all__ = ["FAMILIES", "Method", "REGISTRY", "get", "import_modules", "register"]
