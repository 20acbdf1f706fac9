"""What the commands share: list and seed flags, quiet mode, SIGTERM as an interrupt, the store's notes."""

from __future__ import annotations

import argparse
import os
import sys


def csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def seed_list(value: str) -> list[int]:
    try:
        return [int(v) for v in csv_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got '{value}'") from None


def quiet(args) -> bool:
    return bool(getattr(args, "quiet", False)) or os.environ.get("CI", "").lower() in ("1", "true", "yes")


def interrupt(signum, frame):
    raise KeyboardInterrupt


def print_store_problems(store, bad: list[str]) -> None:
    """One line on stderr when the store holds files that are not usable records (they are skipped)."""
    from bench.run.store import unusable_note

    if bad:
        print(f"note: under {store.root}, {unusable_note(bad)} (ignored)", file=sys.stderr)


def suite_name(name_or_path: str) -> str:
    """The records folder of a suite given by name or YAML path (its `name:`), else the name as given."""
    from bench.plan.suite import raw_suite

    name = raw_suite(name_or_path).get("name")
    return name if isinstance(name, str) else name_or_path
