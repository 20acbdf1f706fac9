"""Writing the report's figures to files (PNG and SVG): several at once, and only those that would change.

Drawing a figure to its files is most of a report's time (about 1.5 s of CPU per figure on one core of a
2.5 GHz Xeon), and the figures are independent. So bench/report/plots.py only chooses each figure's data,
and `write_all` shares the drawing out: this process draws one share, and a helper process per other
share draws the rest. Helpers are started as `python -m bench.report.render JOBS`, not through
multiprocessing: multiprocessing's spawn would run the caller's own script again in each helper (a
script calling `write_report` without a `__main__` guard would start over), and fork would copy the
report process's threads and state. A helper imports matplotlib and bench/report's drawing code only
(about a second), and draws under this process's matplotlib settings.

A figure is a pure function of its draw function's arguments, the drawing code (DRAWING_CODE), the
versions of the libraries that render and encode it, and matplotlib's settings: together they make the
figure's key. The plots folder keeps, in DRAWN, each figure's key and the sha256 of the bytes written to
its two files; a figure whose key is unchanged and whose files still hold those bytes is not drawn again
(a report rerun after a few more cells redraws only the figures those cells change). The SVG's internal
ids are salted with a constant, so the same figure gives the same bytes every time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import matplotlib  # not its figures and backends: a report whose figures are all unchanged never draws

from bench.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
PAD_INCHES = 0.1  # matplotlib's own margin around a tight bounding box
DRAWN = ".drawn.json"  # in the plots folder: {png name: {"key": ..., "files": {png/svg name: sha256}}}
SVG_SALT = "peft-bench"  # matplotlib salts the SVG's ids with a random value unless one is given
# the modules whose code decides what a figure looks like, besides the libraries (a test keeps it complete)
DRAWING_CODE = ("bench.report.draw", "bench.report.labels", "bench.report.pareto", "bench.report.render",
                "bench.report.style")


class Job(NamedTuple):
    draw: str  # the name of the bench.report.draw function that returns the figure
    args: list  # its arguments, plain data: numbers, strings, lists, None
    png: Path
    svg: Path


def write_figure(fig: Figure, png: Path, svg: Path) -> dict[str, str]:
    """The figure as a PNG (DPI dots per inch) and an SVG, both cropped to the same tight box: the box is
    worked out once (a layout pass, nothing rasterised), where `bbox_inches="tight"` would lay the figure
    out again for each file. Legends placed outside the axes lie inside the box, never cut off. Each file
    is replaced whole (never seen half written); returns the sha256 of each file's bytes, by file name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    box = fig.get_tightbbox(renderer).padded(PAD_INCHES)
    png_bytes, svg_bytes = io.BytesIO(), io.BytesIO()
    fig.savefig(png_bytes, format="png", dpi=DPI, bbox_inches=box, metadata={"Software": None})
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT}):
        fig.savefig(svg_bytes, format="svg", bbox_inches=box, metadata={"Date": None})
    written = {}
    for path, data in ((png, png_bytes.getvalue()), (svg, svg_bytes.getvalue())):
        atomic_write(path, data)
        written[path.name] = hashlib.sha256(data).hexdigest()
    return written


def draw_and_write(job: Job) -> dict[str, str]:
    return write_figure(getattr(importlib.import_module("bench.report.draw"), job.draw)(*job.args), job.png, job.svg)


def write_all(jobs: list[Job], workers: int, folder: Path | None = None) -> int:
    """Draw and write each job whose files in `folder` (the plots folder, holding DRAWN) do not already
    hold this very figure, `workers` at a time: this process draws every `workers`-th job from the first,
    a helper process each other share (jobs travel pickled, with this process's matplotlib settings). A
    helper that fails raises here, with the end of its error output. Returns how many figures were drawn."""
    drawn = _read_drawn(folder)
    settings = _settings()
    version = _code_version(settings)
    keys = [figure_key(job, version) for job in jobs]
    todo = [job for job, key in zip(jobs, keys) if not _unchanged(drawn.get(job.png.name), key, job)]
    shares = [todo[i::workers] for i in range(max(1, min(workers, len(todo))))]
    hashes = {}
    with tempfile.TemporaryDirectory(prefix="peft-bench-plots-") as tmp:
        helpers = [_start(share, settings, Path(tmp) / f"share-{i}") for i, share in enumerate(shares[1:], 1)]
        for job in shares[0]:
            hashes.update(draw_and_write(job))
        for process, stem in helpers:
            if process.wait():
                errors = stem.with_suffix(".err").read_text(errors="replace")
                raise RuntimeError(f"a plot-drawing process ended with exit code {process.returncode}: {errors[-2000:]}")
            hashes.update(json.loads(stem.with_suffix(".json").read_text()))
    if folder is not None:
        redrawn = {job.png.name for job in todo}
        now = {job.png.name: {"key": key, "files": {p.name: hashes[p.name] for p in (job.png, job.svg)}}
               if job.png.name in redrawn else drawn[job.png.name] for job, key in zip(jobs, keys)}
        if now != drawn:
            atomic_write(folder / DRAWN, json.dumps(now, indent=0, sort_keys=True).encode())
    return len(todo)


def figure_key(job: Job, version: str) -> str:
    """What the figure's files depend on: the draw function and its arguments, the file names, and
    `version` (_code_version: the drawing code, the libraries, matplotlib's settings)."""
    parts = [version, job.draw, job.args, job.png.name, job.svg.name]
    return hashlib.sha256(json.dumps(parts, default=_plain).encode()).hexdigest()


def _settings() -> dict:
    """matplotlib's settings now (a matplotlibrc, rcParams set by the caller), but the backend: reading that
    one picks a backend, importing pyplot, and the files are drawn with Agg and SVG whatever it is."""
    return {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != "backend"}


def _code_version(settings: dict) -> str:
    """The drawing code, the versions of what renders and encodes the files, and the settings. Worked out
    afresh for each report (milliseconds), so a long-lived process that changes them gets new keys."""
    import numpy
    import PIL
    from matplotlib import ft2font

    digest = hashlib.sha256(f"matplotlib {matplotlib.__version__} pillow {PIL.__version__} numpy {numpy.__version__} "
                            f"freetype {ft2font.__freetype_version__} {DPI} {PAD_INCHES} {SVG_SALT}".encode())
    digest.update(repr(sorted(settings.items())).encode())
    for name in DRAWING_CODE:  # read, not imported: matplotlib's figure code loads only to draw
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()


def _plain(value):
    """json's fallback for numpy values that slip into a figure's arguments: their exact Python value."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a figure's arguments must be plain data, got {type(value).__name__}")


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _unchanged(entry, key: str, job: Job) -> bool:
    """The figure's files hold the bytes drawn for this very key."""
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("files"), dict):
        return False
    for path in (job.png, job.svg):
        digest = _sha256(path)
        if digest is None or entry["files"].get(path.name) != digest:
            return False
    return True


def _read_drawn(folder: Path | None) -> dict:
    """The figures last written to `folder`; {} when there is no such record or it is unreadable (then
    every figure is drawn: the record only ever saves work, it never decides what a figure shows)."""
    try:
        drawn = json.loads((folder / DRAWN).read_text())
    except (OSError, ValueError, TypeError, RecursionError):
        return {}
    return drawn if isinstance(drawn, dict) else {}


def _start(share: list[Job], settings: dict, stem: Path) -> tuple[subprocess.Popen, Path]:
    """A helper drawing `share` under `settings`; it writes the files' hashes to STEM.json, errors to STEM.err."""
    jobs = stem.with_suffix(".pickle")
    jobs.write_bytes(pickle.dumps((settings, share)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this process's `bench`
    with stem.with_suffix(".err").open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "bench.report.render", str(jobs), str(stem.with_suffix(".json"))],
                                   env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return process, stem


if __name__ == "__main__":  # a helper of write_all: python -m bench.report.render JOBS.pickle HASHES.json
    settings, share = pickle.loads(Path(sys.argv[1]).read_bytes())
    with matplotlib.rc_context(settings):
        written = {name: digest for job in share for name, digest in draw_and_write(job).items()}
    Path(sys.argv[2]).write_text(json.dumps(written))
