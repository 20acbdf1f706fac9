"""A suite the harness refuses: one BadInput before any work, saying what was wrong and where (the suite's file and
a line of it), as the tests of each part of a suite check it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from bench.errors import BadInput
from bench.plan.suite import load_suite


def refused(path: Path, message: str, plan: Callable[[str], object] = load_suite) -> BadInput:
    """Planning the suite at `path` (`plan`: load_suite, or a function of the path that expands its grid too)
    raises BadInput whose message says `message` (plain text) and whose `where` is `<path>:<line>`, a line of that
    file. Returns the error."""
    with pytest.raises(BadInput, match=re.escape(message)) as e:
        plan(str(path))
    file, _, line = e.value.where.rpartition(":")
    lines = len(path.read_text().splitlines())
    assert file == str(path) and line.isdigit() and 1 <= int(line) <= lines, e.value.where
    return e.value


def planned(path: str) -> list:
    """The suite at `path` loaded and its grid expanded: where refusals that need the whole plan are made."""
    from bench.plan import grid

    return grid.expand(load_suite(path))
