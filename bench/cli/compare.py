"""`peft-bench compare`: two results stores, cell by cell."""

from __future__ import annotations

import json

from bench.cli.common import suite_name
from bench.errors import BadInput


def add(sub) -> None:
    from bench.report.compare import DEFAULTS as tolerances

    cmp = sub.add_parser("compare", help="compare two results stores cell by cell (versions, machines)")
    cmp.add_argument("results_a", metavar="RESULTS_A", help="results store (or one suite's folder) to compare from")
    cmp.add_argument("results_b", metavar="RESULTS_B", help="results store (or one suite's folder) to compare to")
    cmp.add_argument("--suite", help="only this suite's records (name or YAML path)")
    cmp.add_argument("--json", action="store_true", help="machine-readable output with every figure")
    cmp.add_argument("--score-tol", type=float, default=tolerances.score_abs,
                     help="flag score changes above this many points (default %(default)s)")
    cmp.add_argument("--memory-rtol", type=float, default=tolerances.memory_rtol,
                     help="warn when measured memory moves by more than this fraction (default %(default)s)")
    cmp.add_argument("--time-ratio", type=float, default=tolerances.time_warn_ratio,
                     help="warn when a time changes by this factor (default %(default)s)")
    cmp.set_defaults(func=command)


def command(args) -> int:
    from bench.judging import Tolerances
    from bench.report.compare import compare, render

    for flag, value in (("--score-tol", args.score_tol), ("--memory-rtol", args.memory_rtol)):
        if not value >= 0:
            raise BadInput(f"{flag} must be a number >= 0, got {value}", flag)
    if not args.time_ratio >= 1:
        raise BadInput(f"--time-ratio must be >= 1 (a factor), got {args.time_ratio}", "--time-ratio")
    tolerances = Tolerances(score_abs=args.score_tol, memory_rtol=args.memory_rtol, time_warn_ratio=args.time_ratio)
    result = compare(args.results_a, args.results_b, suite_name(args.suite) if args.suite else None, tolerances)
    print(json.dumps(result.to_json(), indent=1, default=str) if args.json else render(result))
    return 0
