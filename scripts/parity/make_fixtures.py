"""Runs every fixture generator (scripts/parity/gen_*.py) in this interpreter, then the parity tests.

`make parity` calls it with .venv-parity's python: the generators import the reference implementations, which
only that environment has; the parity tests then run in the project's environment and print, per method, the
largest difference from its reference (tests/test_parity_*.py, `-s`).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Generators whose reference needs an environment of its own: run only when named, in it (its make target).
OWN_ENVIRONMENT = {"hyperformer": "make parity-hyperformer (transformers 3.5.1 in .venv-hyperformer)"}


def main(only: list[str]) -> None:
    generators = sorted(HERE.glob("gen_*.py"))
    if only:
        unknown = sorted(set(only) - {g.stem.removeprefix("gen_") for g in generators})
        if unknown:
            sys.exit(f"make_fixtures: no generator named {unknown}; choose from "
                     f"{[g.stem.removeprefix('gen_') for g in generators]}")
        generators = [g for g in generators if g.stem.removeprefix("gen_") in only]
    else:
        for name, how in OWN_ENVIRONMENT.items():
            print(f"== gen_{name}.py: not here; {how}", flush=True)
        generators = [g for g in generators if g.stem.removeprefix("gen_") not in OWN_ENVIRONMENT]
    for generator in generators:
        print(f"== {generator.name}", flush=True)
        runpy.run_path(str(generator), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
