"""The package's floors: every import in bench/ points to its own floor or one below, and no modules import
each other in a circle (lazy imports inside functions, and `import_module("bench....")`, count too).

A floor holds units: a folder of bench/ (its modules together) or a module at bench/'s top. Data flows up the
floors: suite -> grid -> executor -> cell -> record -> store -> report. A new folder or top-level module must be
given a floor here (and in README's Layout), which is where a reviewer sees where it belongs.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

FLOORS = [  # lowest first
    {"errors", "fmt", "files", "yamlfile", "tensors", "env"},  # ground: no harness knowledge
    {"archs", "optimizers", "config", "figures", "judging", "record", "references/"},  # the tables every stage reads
    {"tasks/", "layers/"},  # what a cell is made of
    {"tiny", "models"},
    {"methods/"},
    {"plan/"},
    {"cell/"},
    {"run/"},
    {"report/"},
    {"tools/"},
    {"cli/", "__main__", "bench"},
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in BENCH.rglob("*.py"):
        parts = path.relative_to(BENCH.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The bench modules (or names in them) one import statement or `import_module("bench...")` call names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        return [f"{base}.{a.name}" for a in node.names] + [base]
    if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def import_edges() -> dict[str, dict[str, str]]:
    """module -> {imported bench module: 'file:line' of the first import of it}."""
    mods = _modules()
    edges: dict[str, dict[str, str]] = defaultdict(dict)
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = _targets(node, module, path.name == "__init__.py")
            if not names:
                continue
            if isinstance(node, ast.ImportFrom):  # `from a import b`: module a.b if it is one, else module a
                *named, base = names
                found = [n for n in named if n in mods] or ([base] if base in mods else [])
            else:
                found = [n for n in names if n in mods]
            for target in found:
                if target != module:
                    edges[module].setdefault(target, f"{path.relative_to(BENCH.parent)}:{node.lineno}")
    return edges


def unit_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "bench"
    return parts[1] + "/" if (BENCH / parts[1]).is_dir() else parts[1]


def floor_of(unit: str) -> int:
    for level, units in enumerate(FLOORS):
        if unit in units:
            return level
    raise AssertionError(f"{unit} has no floor: add it to FLOORS in tests/test_layering.py (and README's Layout)")


def circles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(edges.get(root, ())))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

    for module in sorted(_modules()):
        if module not in index:
            visit(module)
    return found


def test_every_unit_has_a_floor():
    for module in _modules():
        floor_of(unit_of(module))


def test_no_import_points_up_a_floor():
    upward = [f"{where}: {unit_of(src)} (floor {floor_of(unit_of(src))}) imports {dst} "
              f"(floor {floor_of(unit_of(dst))})"
              for src, targets in import_edges().items() for dst, where in targets.items()
              if floor_of(unit_of(dst)) > floor_of(unit_of(src))]
    assert not upward, "imports that point up a floor:\n" + "\n".join(sorted(upward))


def test_no_modules_import_each_other_in_a_circle():
    edges = import_edges()
    found = circles(edges)
    described = [" <-> ".join(group) + ": " + "; ".join(edges[a][b] for a in group for b in group if b in edges[a])
                 for group in found]
    assert not found, "modules importing each other in a circle:\n" + "\n".join(described)


@pytest.mark.parametrize("source, expected", [
    ("from bench.run.store import Store\n", {"bench.run.store"}),
    ("from bench.run import store\n", {"bench.run.store"}),
    ("from bench import fmt\n", {"bench.fmt"}),
    ("def f():\n    import bench.figures\n", {"bench.figures"}),
    ("from importlib import import_module\nimport_module('bench.report.fmt')\n", set()),  # not a module now
    ("import importlib\nimportlib.import_module('bench.cli')\n", {"bench.cli"}),
    ("from ..errors import BadInput\n", {"bench.errors"}),
])
def test_the_scan_sees_every_way_of_importing(tmp_path, monkeypatch, source, expected):
    """The checks above are only as good as the scan: each form of import is found (a scan that missed lazy
    or string imports would pass a house with a stair back up)."""
    fake = tmp_path / "bench"
    (fake / "run").mkdir(parents=True)
    for name in ("__init__.py", "errors.py", "fmt.py", "figures.py", "cli.py", "run/__init__.py", "run/store.py"):
        (fake / name).write_text("")
    (fake / "run" / "probe.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "BENCH", fake)
    assert set(import_edges().get("bench.run.probe", {})) == expected


def test_an_upward_import_and_a_circle_are_caught(tmp_path, monkeypatch):
    fake = tmp_path / "bench"
    (fake / "run").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "errors.py").write_text("from bench.run import store\n")  # the ground floor reaching up to run/
    (fake / "run" / "__init__.py").write_text("")
    (fake / "run" / "store.py").write_text("def f():\n    from bench.run import runner\n")
    (fake / "run" / "runner.py").write_text("from bench.run.store import f\n")
    monkeypatch.setattr(sys.modules[__name__], "BENCH", fake)
    with pytest.raises(AssertionError, match=r"bench/errors.py:1: errors \(floor 0\) imports bench.run.store"):
        test_no_import_points_up_a_floor()
    with pytest.raises(AssertionError, match="bench.run.runner <-> bench.run.store"):
        test_no_modules_import_each_other_in_a_circle()
