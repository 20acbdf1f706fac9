"""Number formatting shared by every report format."""

from __future__ import annotations

import math


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def count(value) -> str:
    """Parameter counts: 294,912 -> '294.9K', 124,645,632 -> '124.6M'."""
    if _missing(value):
        return "–"
    value = float(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def pct(value) -> str:
    if _missing(value):
        return "–"
    return f"{value:.3g}%" if value < 1 else f"{value:.1f}%"


def gib(value) -> str:
    """Bytes as GB (2^30 bytes), the unit GPU memory is quoted in."""
    if _missing(value):
        return "–"
    return f"{value / 2**30:.2f}"


def mib(value) -> str:
    if _missing(value):
        return "–"
    return f"{value / 2**20:.2f}"


def seconds(value) -> str:
    if _missing(value):
        return "–"
    return f"{value:.1f}"


def score(mean, std=None, n=None) -> str:
    if _missing(mean):
        return "–"
    text = f"{mean:.1f}"
    if not _missing(std):
        text += f" ± {std:.1f}"
    if n is not None and n > 1:
        text += f" (n={n})"
    return text
