"""How values are written for people: numbers in every report format (and the names of figures shown to
readers), and text a spreadsheet must not take for a formula. Imports nothing of the harness: every floor may
use it."""

from __future__ import annotations

import math

DASH = "–"  # an unknown figure: never 0, never blank
PEAK_NAMES = {"device_peak_allocated_bytes": "CUDA allocated", "cpu_peak_rss_bytes": "CPU RSS"}


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def mean_of_all(values) -> float | None:
    """The mean of the values, None when there are none or any is missing: a figure averaged over its parts (a
    mixture's tasks, a task's target languages) is unknown when one part is."""
    values = list(values)
    return None if not values or any(missing(v) for v in values) else math.fsum(values) / len(values)


def count(value) -> str:
    """Parameter counts: 294,912 -> '294.9K', 124,645,632 -> '124.6M'."""
    if missing(value):
        return DASH
    value = float(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def counted(n: int, noun: str) -> str:
    """A number of things in words: counted(1, "cell") -> '1 cell', counted(3, "cell") -> '3 cells'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def pct(value) -> str:
    if missing(value):
        return DASH
    return f"{value:.3g}%" if value < 1 else f"{value:.1f}%"


def in_unit(value, scale: float) -> str:
    """Bytes in a table's unit (scale = bytes per unit, e.g. 2**30 for GB), two decimals."""
    if missing(value):
        return DASH
    return f"{value / scale:.2f}"


def size(value) -> str:
    """A file size with its unit (powers of 2): 7112 -> '6.9 KB'."""
    if missing(value):
        return DASH
    value = float(value)
    for unit, power in (("GB", 30), ("MB", 20), ("KB", 10)):
        if abs(value) >= 2**power:
            return f"{value / 2**power:.1f} {unit}"
    return f"{value:.0f} B"


def flops(value) -> str:
    """FLOPs in scientific notation, as T-Few quotes them: 3.1e12."""
    if missing(value):
        return DASH
    return "0" if value == 0 else f"{value:.1e}".replace("e+", "e")


def seconds(value) -> str:
    if missing(value):
        return DASH
    return f"{value:.1f}"


def signed(value) -> str:
    """A difference in score points: '+1.5', '-0.3'."""
    if missing(value):
        return DASH
    return f"{value:+.1f}"


def score(mean, std=None, n=None) -> str:
    """'mean ± std (n=k)'; the std only exists with two or more seeds."""
    if missing(mean):
        return DASH
    text = f"{mean:.1f}"
    if not missing(std):
        text += f" ± {std:.1f}"
    if n is not None:
        text += f" (n={n})"
    return text


def median_iqr(median, iqr=None, n=None) -> str:
    """'median (IQR x, n=k)': T-Few's summary of few-shot scores over seeds."""
    if missing(median):
        return DASH
    text = f"{median:.1f}"
    inner = ([f"IQR {iqr:.1f}"] if not missing(iqr) else []) + ([f"n={n}"] if n is not None else [])
    return f"{text} ({', '.join(inner)})" if inner else text


def peak_name(source) -> str:
    """What a peak-memory figure measured, for headers: 'CPU RSS', 'CUDA allocated'."""
    return PEAK_NAMES.get(source, source or "source unknown")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text):
    """Text a spreadsheet shows as text: one that would start a formula (=, +, -, @, a tab or carriage return,
    as OWASP lists them) gets a leading apostrophe; a number written as text (-5.2) is left as it is."""
    if not isinstance(text, str) or not text.startswith(FORMULA_STARTS):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


def setting_text(values: dict) -> str:
    """A sweep's setting as tables and logs show it: `lr=0.0003, r=8`."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def cell_label(cell: dict) -> str:
    """A record's method label, with its sweep setting when it has one: `lora [lr=0.0003]`."""
    label = cell.get("label") or cell.get("method")
    return f"{label} [{setting_text(cell['sweep'])}]" if cell.get("sweep") else label
