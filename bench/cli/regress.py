"""`peft-bench regress`: a suite against its committed baseline."""

from __future__ import annotations

import json

from bench.cli.common import quiet


def add(sub) -> None:
    reg = sub.add_parser("regress", help="run a suite and compare it with a committed baseline (exit 1 on regression)")
    reg.add_argument("--suite", required=True, help="suite name or YAML path (e.g. ci)")
    reg.add_argument("--baseline", required=True, help="baseline JSON (e.g. results/baselines/ci.json)")
    reg.add_argument("--results", default="results", help="results store the suite runs into (default: results)")
    reg.add_argument("--tolerances", help="YAML file with score_abs, score_abs_per_metric, versioned_rtol, "
                                          "time_warn_ratio (see docs/regression.md)")
    reg.add_argument("--update", action="store_true", help="rewrite the baseline from this run")
    reg.add_argument("--reuse", action="store_true",
                     help="reuse records made by this commit from a clean tree instead of rerunning every cell")
    reg.add_argument("--format", choices=["text", "md"], default="text", help="md: a table for a CI comment")
    reg.add_argument("--json", action="store_true", help="machine-readable verdict and findings")
    reg.add_argument("--quiet", action="store_true", help="no progress bars (also when CI=true)")
    reg.set_defaults(func=command)


def command(args) -> int:
    from bench.files import writable_file, writable_folder
    from bench.run.executors.local import LocalExecutor
    from bench.tools.regress import gate, load_tolerances, render

    tolerances = load_tolerances(args.tolerances)
    writable_folder(args.results, "--results")
    if args.update:
        writable_file(args.baseline, "--baseline")
    # One cell at a time, always: the baseline's timings were measured so, and cells side by side would
    # change the figures the gate warns on.
    verdict = gate(args.suite, args.baseline, args.results, tolerances, LocalExecutor(quiet=quiet(args)),
                   update=args.update, reuse=args.reuse, quiet=quiet(args))
    if verdict is None:
        print(f"baseline written: {args.baseline}")
        return 0
    if args.json:
        print(json.dumps(verdict.to_json(), indent=1, default=str))
    else:
        print(render(verdict, markdown=args.format == "md"))
    return 1 if verdict.failed else 0
