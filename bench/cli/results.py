"""`peft-bench results`: merge stores from several machines, or export a suite's records."""

from __future__ import annotations

import os
import sys

from bench.cli.common import suite_name
from bench.errors import BadInput


def add(sub) -> None:
    res = sub.add_parser("results", help="merge stores from several machines, or export a suite's records as a table")
    res.add_argument("action", choices=["merge", "export"])
    res.add_argument("stores", nargs="*", metavar="DIR", help="merge: the stores to read (only read)")
    res.add_argument("--into", help="merge: the store to merge into (created if absent)")
    res.add_argument("--suite", help="export: suite name or YAML path")
    res.add_argument("--results", default="results", help="export: results store folder (default: results)")
    res.add_argument("--format", default="csv", choices=["parquet", "csv", "jsonl"], help="export: file format")
    res.add_argument("--out", help="export: the file to write (default: REPORTS/<suite>-records.<format>)")
    res.add_argument("--reports", default="reports", help="export: reports folder of the default --out")
    res.add_argument("--curves", action="store_true",
                     help="export: the training curves (a row per point: step, loss, lr, grad_norm, tokens_per_s, "
                          "eval) instead of the records; default --out REPORTS/<suite>-curves.<format>")
    res.set_defaults(func=command)


def command(args) -> int:
    from bench.files import writable_file, writable_folder
    from bench.run import exchange

    if args.action == "merge":
        if not args.into or not args.stores:
            raise BadInput("merge needs stores to read and --into DIR", "--into" if not args.into else "DIR")
        writable_folder(args.into, "--into")
        summary = exchange.merge(args.stores, args.into)
        for line in summary.conflicts + [f"skipped: {bad}" for bad in summary.unusable] + \
                [f"refused: {why}" for why in summary.refused]:
            print(line, file=sys.stderr)
        print(summary.line(args.into))
        return 0
    if not args.suite or args.stores:
        raise BadInput("export takes --suite S (and --results DIR), no store arguments", "--suite")
    name = suite_name(args.suite)
    kind = "curves" if args.curves else "records"
    out = args.out or os.path.join(args.reports, f"{name}-{kind}.{args.format}")
    writable_file(out, "--out")
    print(exchange.export(args.results, name, args.format, out, curves=args.curves))
    return 0
