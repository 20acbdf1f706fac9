"""`peft-bench report`: a suite's report from its records."""

from __future__ import annotations

import sys

from bench.cli.common import print_store_problems, suite_name


def add(sub) -> None:
    from bench.report import FORMATS

    rep = sub.add_parser("report", help="write a suite's report from its records")
    rep.add_argument("--suite", required=True, help="suite name or YAML path (its records folder under --results)")
    rep.add_argument("--results", default="results", help="results store folder (default: results)")
    rep.add_argument("--out", default="reports", help="reports folder (default: reports)")
    rep.add_argument("--format", help=f"comma-separated formats among {', '.join(FORMATS)} (default: all)")
    rep.set_defaults(func=command)


def command(args) -> int:
    from bench.files import writable_folder
    from bench.report import write_report
    from bench.run.store import Store

    writable_folder(args.out, "--out")
    paths, unusable, notes = write_report(suite_name(args.suite), args.results, args.out, args.format,
                                          suite_source=args.suite)
    print_store_problems(Store(args.results), unusable)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0
