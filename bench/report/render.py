"""Writing the report's figures to files (PNG and SVG): several at once, and only those whose data changed.

Drawing a figure to its files is most of a report's time (about a second per figure on one core of a
2.5 GHz Xeon), and the figures are independent. So bench/report/plots.py only chooses each figure's data,
and `write_all` shares the drawing out: this process draws one share, and a helper process per other
share draws the rest. Helpers are started as `python -m bench.report.render JOBS`, not through
multiprocessing: multiprocessing's spawn would run the caller's own script again in each helper (a
script calling `write_report` without a `__main__` guard would start over), and fork would copy the
report process's threads and state. This module imports only matplotlib, so a helper starts in about a
second, while this process draws.

A figure is a pure function of its draw function's arguments, the drawing code and matplotlib's version
and settings: together they make the figure's key. The plots folder keeps, in DRAWN, each figure's key
and its two files' size and modification time when written; a figure whose key and files are unchanged
is not drawn again (a report rerun after a few more cells redraws only the models those cells touched).
The SVG's internal ids are salted with a constant, so the same figure gives the same bytes every time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import matplotlib  # not its figures and backends: a report whose figures are all unchanged never draws

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
PAD_INCHES = 0.1  # matplotlib's own margin around a tight bounding box
DRAWN = ".drawn.json"  # in the plots folder: {png name: {"key": ..., "files": {png/svg name: [size, mtime_ns]}}}
SVG_SALT = "peft-bench"  # matplotlib salts the SVG's ids with a random value unless one is given
# the modules whose code decides what a figure looks like, besides matplotlib
DRAWING_CODE = ("bench.report.draw", "bench.report.labels", "bench.report.pareto", "bench.report.render")


class Job(NamedTuple):
    draw: str  # the name of the bench.report.draw function that returns the figure
    args: list  # its arguments, plain data: numbers, strings, lists, None
    png: Path
    svg: Path


def write_figure(fig: Figure, png: Path, svg: Path) -> None:
    """The figure as a PNG (DPI dots per inch) and an SVG, both cropped to the same tight box: the box is
    worked out once (a layout pass, nothing rasterised), where `bbox_inches="tight"` would lay the figure
    out again for each file. Legends placed outside the axes lie inside the box, never cut off."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    box = fig.get_tightbbox(renderer).padded(PAD_INCHES)
    fig.savefig(png, dpi=DPI, bbox_inches=box, metadata={"Software": None})
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT}):
        fig.savefig(svg, bbox_inches=box, metadata={"Date": None})


def write_all(jobs: list[Job], workers: int, folder: Path | None = None) -> int:
    """Draw and write each job whose files in `folder` (the plots folder, holding DRAWN) are not already
    this figure's, `workers` at a time: this process draws every `workers`-th job from the first, a helper
    process each other share (jobs travel pickled). A helper that fails raises here, with the end of its
    error output. Returns how many figures were drawn."""
    drawn = _read_drawn(folder)
    keys = [figure_key(job) for job in jobs]
    todo = [job for job, key in zip(jobs, keys) if not _unchanged(drawn.get(job.png.name), key, job)]
    shares = [todo[i::workers] for i in range(max(1, min(workers, len(todo))))]
    with tempfile.TemporaryDirectory(prefix="peft-bench-plots-") as tmp:
        helpers = [_start(share, Path(tmp) / f"share-{i}") for i, share in enumerate(shares[1:], 1)]
        for job in shares[0]:
            draw_and_write(job)
        for process, errors in helpers:
            if process.wait():
                raise RuntimeError(f"a plot-drawing process ended with exit code {process.returncode}: "
                                   f"{errors.read_text(errors='replace')[-2000:]}")
    if folder is not None:
        _write_drawn(folder, {job.png.name: {"key": key, "files": _stats(job)} for job, key in zip(jobs, keys)})
    return len(todo)


def draw_and_write(job: Job) -> None:
    write_figure(getattr(importlib.import_module("bench.report.draw"), job.draw)(*job.args), job.png, job.svg)


def figure_key(job: Job) -> str:
    """What the figure's files depend on: the draw function and its arguments, the file names, the drawing
    code, and matplotlib's version and settings (a matplotlibrc changes the figure)."""
    parts = [_code_version(), job.draw, job.args, job.png.name, job.svg.name]
    return hashlib.sha256(json.dumps(parts, default=_plain).encode()).hexdigest()


_CODE_VERSION: list[str] = []


def _code_version() -> str:
    if not _CODE_VERSION:
        import PIL  # it encodes the PNG

        digest = hashlib.sha256(f"{matplotlib.__version__} {PIL.__version__} {DPI} {PAD_INCHES} {SVG_SALT}".encode())
        # every setting but the backend (reading that one picks a backend, importing pyplot; the files are
        # drawn with Agg and SVG whatever it is)
        digest.update(repr([(k, matplotlib.rcParams[k]) for k in sorted(matplotlib.rcParams) if k != "backend"]).encode())
        for name in DRAWING_CODE:  # read, not imported: matplotlib's figure code loads only to draw
            digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
        _CODE_VERSION.append(digest.hexdigest())
    return _CODE_VERSION[0]


def _plain(value):
    """json's fallback for numpy values that slip into a figure's arguments: their exact Python value."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a figure's arguments must be plain data, got {type(value).__name__}")


def _stats(job: Job) -> dict[str, list[int]]:
    out = {}
    for path in (job.png, job.svg):
        try:
            st = path.stat()
            out[path.name] = [st.st_size, st.st_mtime_ns]
        except OSError:
            out[path.name] = None
    return out


def _unchanged(entry, key: str, job: Job) -> bool:
    """The figure's files are there, as written for this very key (same size, same modification time)."""
    if not isinstance(entry, dict) or entry.get("key") != key:
        return False
    stats = _stats(job)
    return None not in stats.values() and entry.get("files") == stats


def _read_drawn(folder: Path | None) -> dict:
    """The figures last written to `folder`; {} when there is no such record or it is unreadable (then
    every figure is drawn: the record only ever saves work, it never decides what a figure shows)."""
    try:
        drawn = json.loads((folder / DRAWN).read_text())
    except (OSError, ValueError, TypeError):
        return {}
    return drawn if isinstance(drawn, dict) else {}


def _write_drawn(folder: Path, drawn: dict) -> None:
    """Replace DRAWN atomically (a report killed mid-write leaves the old one or the new one)."""
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".drawn-", suffix=".tmp", delete=False) as f:
        json.dump(drawn, f, indent=0, sort_keys=True)
    os.replace(f.name, folder / DRAWN)


def _start(share: list[Job], stem: Path) -> tuple[subprocess.Popen, Path]:
    jobs, errors = stem.with_suffix(".pickle"), stem.with_suffix(".err")
    jobs.write_bytes(pickle.dumps(share))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this process's `bench`
    with errors.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "bench.report.render", str(jobs)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return process, errors


if __name__ == "__main__":  # a helper of write_all: python -m bench.report.render JOBS.pickle
    for job in pickle.loads(Path(sys.argv[1]).read_bytes()):
        draw_and_write(job)
