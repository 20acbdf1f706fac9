"""Errors the user can act on, and where they point.

Every piece of bad input (a suite file, a CLI flag, a task definition) raises `BadInput` before any
work starts. The CLI turns it into one message and exit code 2; anything else is a bug (exit 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BadInput(Exception):
    """Input the user must fix: what was wrong, where, and the valid choices."""

    def __init__(self, message: str, where: str | None = None, choices: Iterable[str] | None = None):
        self.message = message
        self.where = where
        self.choices = sorted(choices) if choices is not None else None
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.choices:
            text += "\n  valid choices: " + ", ".join(self.choices)
        return text


class Unsupported(Exception):
    """A (method, model, task) combination that cannot work; recorded as status `unsupported`.

    environment=True when it could work elsewhere (a GPU, an installed package): --retry-failed
    reruns such cells, since their cell id does not change with the machine.
    """

    def __init__(self, message: str, environment: bool = False):
        super().__init__(message)
        self.environment = environment


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str], where: str | None = None) -> BadInput:
    choices = list(choices)
    return BadInput(f"unknown {kind} '{name}'{did_you_mean(name, choices)}", where, choices)
