"""The tested environment: the lock covers what bench/ imports, records say how the installed versions
relate to it, and compare/regress name the packages whose versions differ."""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from bench import env
from bench.cli import main
from bench.tools.regress import compare as gate_compare
from bench.tools.regress import make_baseline
from tests.handmade import survey_records, write_store

ROOT = Path(__file__).resolve().parent.parent


def imported_modules() -> dict[str, str]:
    """Top-level module -> first file importing it, over every absolute import in bench/."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def declared_requirements() -> list[str]:
    """pyproject.toml's dependencies and extras, read from the file: the tests also run from the source
    (PYTHONPATH=.), where no peft-bench distribution is installed to ask."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the lock pins tomli there
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def test_the_lock_pins_every_distribution_bench_imports():
    pins = env.locked_versions()
    assert pins, "requirements-lock.txt is missing or empty (make lock)"
    distributions = importlib.metadata.packages_distributions()
    third_party = {m: where for m, where in imported_modules().items()
                   if m not in sys.stdlib_module_names and m not in ("bench", "__future__")}
    assert {"torch", "transformers", "peft", "yaml"} <= set(third_party)  # the walk sees the imports
    unpinned, absent = [], []
    for module, where in sorted(third_party.items()):
        dists = {env._normal(d) for d in distributions.get(module, [])}
        if not dists:
            absent.append(f"{module} ({where})")
        elif "torch" not in dists and not dists & set(pins):
            unpinned.append(f"{module} ({where}): distribution {sorted(dists)} is not in the lock")
    assert not unpinned, unpinned
    # A module nothing installed provides is the lock's gap only where the lock is installed; elsewhere (a
    # GPU image running the source with its own packages) the environment, not the lock, lacks it.
    if absent and env.lock_state()["status"] != "locked":
        pytest.skip(f"not installed, in an environment that is not the lock: {', '.join(absent)}")
    assert not absent, [f"{m}: not installed, so no locked distribution provides it" for m in absent]


def test_the_lock_holds_every_declared_dependency_and_torch_is_pinned_by_the_makefile():
    pins = env.locked_versions()
    names = {env._normal(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in declared_requirements()}
    assert names - set(pins) == {"torch"}  # every extra is locked; torch's build is the machine's
    assert re.search(r"^TORCH \?= torch==\d+\.\d+\.\d+$", (ROOT / "Makefile").read_text(), re.M)


def test_locked_versions_follow_the_markers_of_this_python(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# header\nNumPy==1.0 ; python_full_version < '3.0'\nnumpy==2.0 ; python_full_version >= '3.0'\n"
                    "    # via pandas\ntyping_extensions==4.1\nnever==1 ; sys_platform == 'never'\n")
    assert env.locked_versions(lock) == {"numpy": "2.0", "typing-extensions": "4.1"}
    assert env.locked_versions(tmp_path / "absent.txt") is None


def test_lock_state_names_what_differs(monkeypatch, tmp_path):
    lock = tmp_path / "lock.txt"
    pyyaml = importlib.metadata.version("pyyaml")
    lock.write_text(f"pyyaml=={pyyaml}\npeft==0.0.1\nnot-installed-here==1.0\n")
    monkeypatch.setattr(env, "LOCK_FILE", lock)
    env.lock_state.cache_clear()
    try:
        state = env.lock_state()
    finally:
        env.lock_state.cache_clear()
    assert state["status"] == "unlocked"
    assert state["differs"] == {"peft": {"locked": "0.0.1", "installed": importlib.metadata.version("peft")},
                                "not-installed-here": {"locked": "1.0", "installed": None}}
    assert state["packages"]["pyyaml"] == pyyaml and state["packages"]["torch"] == importlib.metadata.version("torch")
    assert len(state["sha256"]) == 64


def test_env_command_checks_the_lock(monkeypatch, tmp_path, capsys):
    lock = tmp_path / "lock.txt"
    lock.write_text(f"pyyaml=={importlib.metadata.version('pyyaml')}\n")
    monkeypatch.setattr(env, "LOCK_FILE", lock)
    env.lock_state.cache_clear()
    try:
        assert main(["env", "--check-lock"]) == 0
        assert "environment: locked" in capsys.readouterr().out
        lock.write_text("pyyaml==0.0.1\n")
        env.lock_state.cache_clear()
        assert main(["env", "--check-lock"]) == 1
        assert "pyyaml: locked 0.0.1, installed" in capsys.readouterr().out
    finally:
        env.lock_state.cache_clear()


def _with_packages(records, packages):
    for r in records:
        r.setdefault("env", {})["lock"] = {"status": "locked", "sha256": "x", "differs": {}, "packages": packages}
    return records


def test_compare_and_regress_warn_when_environments_differ(tmp_path, capsys):
    old = {"transformers": "5.23.0", "peft": "0.21.2", "torch": "2.13.0"}
    new = {"transformers": "5.24.0", "peft": "0.21.2", "torch": "2.13.0", "uv": "1"}
    a = write_store(tmp_path / "a", _with_packages(survey_records(), old))
    b = write_store(tmp_path / "b", _with_packages(survey_records(), new))
    assert main(["compare", str(a), str(b)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "warning: the environments differ in 2 package(s): transformers 5.23.0 -> 5.24.0, uv absent -> 1"
    same = write_store(tmp_path / "c", _with_packages(survey_records(), copy.deepcopy(old)))
    assert main(["compare", str(a), str(same)]) == 0
    assert "environments differ" not in capsys.readouterr().out

    records = [r for r in _with_packages(survey_records(), new) if r["status"] == "ok"]
    baseline = make_baseline("hand", records, {"lock": {"packages": old}})
    verdict = gate_compare(baseline, records, __import__("bench.judging").judging.Tolerances())
    assert verdict.environment.endswith("transformers 5.23.0 -> 5.24.0, uv absent -> 1")
    assert not verdict.failed
    old_baseline = make_baseline("hand", records, {"torch": "2.13.0"})  # made before env.lock existed
    assert "cannot be compared" in gate_compare(old_baseline, records,
                                                __import__("bench.judging").judging.Tolerances()).environment
