"""Writing the report's figures to files (PNG and SVG), several at once.

Drawing a figure to its files is most of a report's time (about a second per figure on one core of a
2.5 GHz Xeon, against milliseconds to build it), and the figures are independent. So bench/report/plots.py
builds them, and `write_all` shares them out: this process draws one share, and a helper process per
other share draws the rest. Helpers are started as `python -m bench.report.render JOBS`, not through
multiprocessing: multiprocessing's spawn would run the caller's own script again in each helper (a
script calling `write_report` without a `__main__` guard would start over), and fork would copy the
report process's threads and state. This module imports only matplotlib, so a helper starts in about a
second, while this process draws.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 150
PAD_INCHES = 0.1  # matplotlib's own margin around a tight bounding box


def write_figure(fig: Figure, png: Path, svg: Path) -> None:
    """The figure as a PNG (DPI dots per inch) and an SVG, both cropped to the same tight box: the box is
    worked out once (a layout pass, nothing rasterised), where `bbox_inches="tight"` would lay the figure
    out again for each file. Legends placed outside the axes lie inside the box, never cut off."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    box = fig.get_tightbbox(renderer).padded(PAD_INCHES)
    fig.savefig(png, dpi=DPI, bbox_inches=box, metadata={"Software": None})
    fig.savefig(svg, bbox_inches=box, metadata={"Date": None})


def write_all(jobs: list[tuple[Figure, Path, Path]], workers: int) -> None:
    """Write each (figure, png, svg) job, `workers` at a time: this process draws every `workers`-th job
    from the first, a helper process each other share (figures travel pickled). A helper that fails
    raises here, with the end of its error output."""
    shares = [jobs[i::workers] for i in range(max(1, min(workers, len(jobs))))]
    with tempfile.TemporaryDirectory(prefix="peft-bench-plots-") as tmp:
        helpers = [_start(share, Path(tmp) / f"share-{i}") for i, share in enumerate(shares[1:], 1)]
        for job in shares[0]:
            write_figure(*job)
        for process, errors in helpers:
            if process.wait():
                raise RuntimeError(f"a plot-drawing process ended with exit code {process.returncode}: "
                                   f"{errors.read_text(errors='replace')[-2000:]}")


def _start(share: list, stem: Path) -> tuple[subprocess.Popen, Path]:
    jobs, errors = stem.with_suffix(".pickle"), stem.with_suffix(".err")
    jobs.write_bytes(pickle.dumps(share))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this process's `bench`
    with errors.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "bench.report.render", str(jobs)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return process, errors


if __name__ == "__main__":  # a helper of write_all: python -m bench.report.render JOBS.pickle
    for job in pickle.loads(Path(sys.argv[1]).read_bytes()):
        write_figure(*job)
