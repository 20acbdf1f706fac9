"""Writing plots several at once (bench/report/render.py): the same files as one process writes, a helper's
failure reported with its error, and a caller's script never run again by a helper."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from bench.report.render import write_all


def figures(n: int) -> list[Figure]:
    out = []
    for i in range(n):
        fig = Figure(figsize=(4, 3))
        ax = fig.subplots()
        ax.plot([0, 1, 2], [i, i + 1, i * 2], marker="o", label=f"series {i}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside the axes: the tight box must hold it
        ax.set_title(f"figure {i}")
        out.append(fig)
    return out


def jobs(folder: Path, n: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    return [(fig, folder / f"f{i}.png", folder / f"f{i}.svg") for i, fig in enumerate(figures(n))]


def test_helpers_write_what_one_process_writes(tmp_path):
    write_all(jobs(tmp_path / "one", 3), workers=1)
    write_all(jobs(tmp_path / "three", 3), workers=3)
    for i in range(3):
        assert (tmp_path / "one" / f"f{i}.png").read_bytes() == (tmp_path / "three" / f"f{i}.png").read_bytes()
        assert (tmp_path / "three" / f"f{i}.svg").read_text().lstrip().startswith("<?xml")


def test_the_tight_box_holds_a_legend_outside_the_axes(tmp_path):
    from PIL import Image

    (fig, png, svg), = jobs(tmp_path, 1)
    width_in = fig.get_size_inches()[0]
    write_all([(fig, png, svg)], workers=1)
    assert Image.open(png).size[0] > width_in * 150  # wider than the figure: the legend was kept, not cut


def test_a_failing_helper_raises_with_its_error(tmp_path):
    work = jobs(tmp_path, 2)
    fig, _, svg = work[1]  # the second job goes to the helper
    work[1] = (fig, tmp_path / "missing-folder" / "f1.png", svg)
    with pytest.raises(RuntimeError, match="(?s)plot-drawing process .*FileNotFoundError"):
        write_all(work, workers=2)
    assert (tmp_path / "f0.png").is_file()  # this process's share was written


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """multiprocessing's spawn would import the calling script again in each helper; these helpers never do."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from tests.test_report_render import jobs
        from bench.report.render import write_all
        from pathlib import Path
        print("script body ran")
        write_all(jobs(Path({str(tmp_path / "out")!r}), 2), workers=2)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("script body ran") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0.png", "f0.svg", "f1.png", "f1.svg"]
