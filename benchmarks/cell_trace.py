"""How one cell's code path goes through the harness's modules: a readability check of the cell.

    PYTHONPATH=. python benchmarks/cell_trace.py [--suite smoke] [--method lora] [--model M] [--show] [--smoke]

Runs one tiny cell in this process under `sys.setprofile`. An *entry* is a call into a `bench.*`
module from outside it while that module is not already on the stack (a module calling its own helpers
has not been left). Entries are counted once per (phase, function entered), so a loop's later
iterations add nothing a reader would not already have read; properties and dataclass-made methods
are not counted (nothing to go and read). Phases: setup, train, evaluate (the recipe's functions,
bench/cell/recipe.py), each instrument moment ("measure loaded", bench/cell/instruments.py), and run
(the recipe's own lines between them, which open the record first and finish it last).

A reader follows the calls one piece of code (the *caller*, the innermost harness module on the stack)
makes into other modules, in order. A *return* is a caller calling a module again, in the same phase,
after having called another module in between: the module's code is then read in two stretches.
Calls a module makes inside itself or into others while it runs do not break its stretch.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

PHASES = ("setup", "train", "evaluate")  # the recipe's functions, bench/cell/recipe.py


def phase_and_stack(frame) -> tuple[str, list[str]]:
    """The innermost recipe phase or instrument moment on the stack, and the bench modules on it, innermost
    first (the first is the caller: whose code made the call)."""
    phase, modules = None, []
    while frame is not None:
        name, module = frame.f_code.co_name, frame.f_globals.get("__name__", "")
        if module.startswith("bench.") and module not in modules:
            modules.append(module)
        if phase is None and module == "bench.cell.instruments" and name in ("at", "window"):
            phase = f"measure {frame.f_locals.get('moment')}"
        if phase is None and module == "bench.cell.recipe" and name in PHASES:
            phase = name
        frame = frame.f_back
    return phase or "run", modules


def not_read(frame) -> bool:
    """Code a reader does not go and read: a property of an object in hand (`bundle.kind`), what a
    dataclass generated (its `__init__`), or a record section taking a figure (bench/record.py: FigureSection,
    a dict that checks the name it is given)."""
    if not frame.f_code.co_filename.endswith(".py"):
        return True
    owner = frame.f_locals.get("self")
    if isinstance(owner, dict):
        return True
    return owner is not None and isinstance(getattr(type(owner), frame.f_code.co_name, None), property)


def trace(cell) -> list[tuple[str, str, str, str]]:
    """(phase, caller module, module, function) of each entry into a harness module, in order."""
    from bench.cell import recipe

    entries: list[tuple[str, str, str, str]] = []
    seen: set = set()

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("bench.") or not_read(frame):
            return
        phase, on_stack = phase_and_stack(frame.f_back)
        if module in on_stack or (phase, frame.f_code) in seen:
            return
        seen.add((phase, frame.f_code))
        entries.append((phase, on_stack[0] if on_stack else "-", module, frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        record = recipe.run_cell(cell, quiet=True)
    finally:
        sys.setprofile(None)
    assert record["status"] == "ok", record["error"]
    return entries


def returns(entries: list[tuple[str, str, str, str]]) -> Counter:
    """Per (phase, module): how often a phase's reader comes back to the module after leaving it. A reader
    reads a caller's code and goes out to the modules it calls: the calls one piece of code makes into
    other modules are followed in order, and a module it calls again after calling another one in
    between is a return. Calls made inside the module called (its own helpers' calls) are its business
    and do not break its stretch; entries one after another into one module are one stretch."""
    last: dict[tuple[str, str], str] = {}  # (phase, caller) -> the module it called last
    stretches: Counter = Counter()
    for phase, caller, module, _ in entries:
        if last.get((phase, caller)) != module:
            stretches[(phase, caller, module)] += 1
        last[(phase, caller)] = module
    back: Counter = Counter()
    for (phase, _, module), n in stretches.items():
        back[(phase, module)] += n - 1
    return Counter({key: n for key, n in back.items() if n})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--model", help="the model of the cell (default: the suite's first with the method)")
    parser.add_argument("--show", action="store_true", help="print every entry, in order")
    parser.add_argument("--smoke", action="store_true", help="lora on the tiny encoder of suite ci (the tests' cell)")
    args = parser.parse_args()
    if args.smoke:
        args.suite, args.method, args.model = "ci", "lora", "tiny-encoder"
    from bench.plan import grid
    from bench.plan.suite import load_suite

    cell = next(c for c in grid.expand(load_suite(args.suite))
                if c.method == args.method and args.model in (None, c.model.name))
    entries = trace(cell)
    back = returns(entries)
    if args.show:
        for phase, caller, module, function in entries:
            print(f"{phase:<24} {caller:<28} -> {module:<28} {function}")
    print(f"{cell.label} · {cell.model.name} · {cell.task.name}: {len(entries)} entries into "
          f"{len({m for _, _, m, _ in entries})} modules, {sum(back.values())} returns to a module already left "
          "in the same phase")
    for (phase, module), n in sorted(back.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {phase:<24} {module}: {n} return(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
