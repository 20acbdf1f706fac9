"""The method registry. Every module of this package is imported here, and each registers its own
methods (`register(Method(...))`), so a new method is one file, with no line to add here."""

from __future__ import annotations

import importlib
import pkgutil

from bench.errors import BadInput, unknown
from bench.methods.base import FAMILIES, REGISTRY, Method, register
from bench.methods.compose import Composition, is_composition

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def import_modules(names, where=None) -> None:
    """Import each named module (it registers its methods); a module that cannot be imported is BadInput."""
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise BadInput(f"cannot import method module '{name}': {e}", where(i) if where else None) from None


def get(name: str, where: str | None = None) -> Method:
    if name not in REGISTRY:
        raise unknown("method", name, REGISTRY, where)
    return REGISTRY[name]


def declared(name: str) -> Method | None:
    """The registered method of a record's `cell.method` (None for a composition, or a method whose
    module this process has not imported): what reports ask about a method's nature."""
    return REGISTRY.get(name)


def for_cell(name: str, where: str | None = None) -> Method | Composition:
    """What applies the method (or composition) a cell names: `.apply(model, resolved config, ctx)`,
    and `.in_context`, which the cell's evaluation sets need before it is applied. An unknown name, or part of
    a composition's: BadInput at `where` with the registry's names."""
    if not is_composition(name):
        return get(name, where)
    composition = Composition(name)
    for part in composition.parts:
        get(part, where)
    return composition


__all__ = ["FAMILIES", "Method", "REGISTRY", "declared", "for_cell", "get", "import_modules", "register"]
