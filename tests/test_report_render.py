"""Writing plots (bench/report/render.py): several at once, the same files as one process writes; a helper's
failure reported with its error; a caller's script never run again by a helper; and a figure redrawn only
when what it depends on changed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pytest

from bench.report import render
from bench.report.render import DRAWN, Job, write_all


def job(folder: Path, i: int, score: float = 50.0) -> Job:
    """A scatter plot of bench.report.draw whose legend sits outside the axes (the tight box must hold it)."""
    args = [f"figure {i}", "cost (log scale)", True, [[10.0, score], [100.0, score + i + 1]], ["baseline", "hybrid"],
            ["full", "mam-adapter"], ["baseline", "hybrid"]]
    return Job("scatter_with_front", args, folder / f"f{i}.png", folder / f"f{i}.svg")


def jobs(folder: Path, n: int) -> list[Job]:
    folder.mkdir(parents=True, exist_ok=True)
    return [job(folder, i) for i in range(n)]


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("f*.*")}


def test_helpers_write_what_one_process_writes(tmp_path):
    write_all(jobs(tmp_path / "one", 3), workers=1)
    write_all(jobs(tmp_path / "three", 3), workers=3)
    for i in range(3):
        for suffix in ("png", "svg"):  # SVG too: its ids are salted with a constant, so it is reproducible
            assert (tmp_path / "one" / f"f{i}.{suffix}").read_bytes() == \
                (tmp_path / "three" / f"f{i}.{suffix}").read_bytes()
    assert (tmp_path / "three" / "f0.svg").read_text().lstrip().startswith("<?xml")


def test_the_tight_box_holds_a_legend_outside_the_axes(tmp_path):
    from PIL import Image

    (work,) = jobs(tmp_path, 1)
    write_all([work], workers=1)
    assert Image.open(work.png).size[0] > 6.4 * 150  # wider than the 6.4-inch figure: the legend was kept, not cut


def test_a_failing_helper_raises_with_its_error(tmp_path):
    work = jobs(tmp_path, 2)
    work[1] = work[1]._replace(args=work[1].args[:2])  # the second job goes to the helper, and cannot be drawn
    with pytest.raises(RuntimeError, match="(?s)plot-drawing process .*TypeError: scatter_with_front"):
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


def test_an_unchanged_figure_is_not_drawn_again(tmp_path):
    assert write_all(jobs(tmp_path, 3), workers=2, folder=tmp_path) == 3
    before = stamps(tmp_path)
    assert write_all(jobs(tmp_path, 3), workers=2, folder=tmp_path) == 0
    assert stamps(tmp_path) == before  # the files were not even rewritten


def test_a_figure_whose_data_changed_is_drawn_again_and_only_it(tmp_path):
    write_all(jobs(tmp_path, 3), workers=1, folder=tmp_path)
    before = stamps(tmp_path)
    changed = jobs(tmp_path, 3)
    changed[1] = job(tmp_path, 1, score=50.000001)  # a score moved in its sixth decimal: still another figure
    assert write_all(changed, workers=1, folder=tmp_path) == 1
    after = stamps(tmp_path)
    assert [name for name in before if after[name] != before[name]] == ["f1.png", "f1.svg"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_all([job(fresh, 1, score=50.000001)], workers=1)
    assert (tmp_path / "f1.png").read_bytes() == (fresh / "f1.png").read_bytes()  # what a fresh drawing gives


DAMAGES = {  # what happens to a plots folder between two reports -> how many of its 2 figures must be redrawn
    "file deleted": 1, "file overwritten, same size and time": 1, "record truncated": 2, "record a list": 2,
    "record of odd shapes": 2, "record nested too deep to parse": 2, "drawing code changed": 2,
    "matplotlib settings changed": 2}


@pytest.mark.parametrize("damage", DAMAGES)
def test_figures_are_redrawn_when_their_files_or_record_cannot_be_trusted(tmp_path, monkeypatch, damage):
    write_all(jobs(tmp_path, 2), workers=1, folder=tmp_path)
    good = (tmp_path / "f0.png").read_bytes()
    if damage == "file deleted":
        (tmp_path / "f0.svg").unlink()
    elif damage == "file overwritten, same size and time":  # e.g. a copy of another figure, with its stat kept
        st = (tmp_path / "f0.png").stat()
        (tmp_path / "f0.png").write_bytes(bytes(st.st_size))
        os.utime(tmp_path / "f0.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "record truncated":
        (tmp_path / DRAWN).write_text('{"f0.png": [1, 2')
    elif damage == "record a list":
        (tmp_path / DRAWN).write_text("[1, 2]")
    elif damage == "record of odd shapes":
        (tmp_path / DRAWN).write_text('{"f0.png": {"key": [1], "files": 5}, "f1.png": [null]}')
    elif damage == "record nested too deep to parse":
        (tmp_path / DRAWN).write_text('{"f0.png": ' + "[" * 100000 + "]" * 100000 + "}")
    elif damage == "drawing code changed":  # a change to any module that decides how figures look
        edited = tmp_path / "style.py"
        edited.write_text(Path(render.__file__).with_name("style.py").read_text() + "\n# edited\n")
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: SimpleNamespace(origin=str(edited))
                            if name == "bench.report.style" else real(name, *a))
    else:
        monkeypatch.setitem(matplotlib.rcParams, "lines.linewidth", 3.0)
    assert write_all(jobs(tmp_path, 2), workers=1, folder=tmp_path) == DAMAGES[damage]
    if not damage.startswith("matplotlib"):
        assert (tmp_path / "f0.png").read_bytes() == good
    assert set(json.loads((tmp_path / DRAWN).read_text())) == {"f0.png", "f1.png"}


def test_the_key_covers_every_module_the_drawing_code_imports():
    """DRAWING_CODE must name each bench module that drawing loads, or a change to it would not redraw."""
    code = ("import sys; import bench.report; before = set(sys.modules); import bench.report.draw, bench.report.render; "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith('bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert set(eval(out.stdout)) <= set(render.DRAWING_CODE)


def test_helpers_draw_under_this_process_s_matplotlib_settings(tmp_path, monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "font.size", 16.0)
    write_all(jobs(tmp_path / "one", 2), workers=1)
    write_all(jobs(tmp_path / "two", 2), workers=2)  # f1 is drawn by a helper, which starts with the defaults
    assert (tmp_path / "one" / "f1.png").read_bytes() == (tmp_path / "two" / "f1.png").read_bytes()


def test_a_figure_argument_that_is_not_plain_data_is_refused(tmp_path):
    bad = job(tmp_path, 0)._replace(args=[object()])
    with pytest.raises(TypeError, match="plain data, got object"):
        write_all([bad], workers=1, folder=tmp_path)
