"""Command line: parse, then call one function per subcommand.

Exit codes: 0 success (failed cells are data: still 0, and counted), 2 bad input, 1 unexpected error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys

from bench.errors import BadInput


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _seeds(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got '{value}'") from None


def _quiet(args) -> bool:
    return bool(getattr(args, "quiet", False)) or os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cmd_run(args) -> int:
    from bench.files import writable_folder
    from bench.plan import grid, suite
    from bench.run.executors import given_flags, make_executor
    from bench.run.runner import run_grid
    from bench.run.store import Store
    from bench.tasks.data import check_cells
    from bench.tools.plan_cost import predicted_memory

    s = suite.load_suite(args.suite, args.data_dir)
    executor = make_executor(args.executor, _quiet(args), given_flags(args), predicted_memory)
    cells = grid.expand(s, args.methods, args.models, args.tasks, args.seeds,
                        args.threads if args.threads is not None else executor.threads_per_cell,
                        executor.slots or 1)
    if args.dry_run:
        from bench.tools.plan_cost import print_plan

        print_plan(cells, executor, args.tflops, Store(args.results))
        return 0
    check_cells(cells)
    store = Store(writable_folder(args.results, "--results"))
    if args.save_adapters:  # results/<suite>/adapters/<cell id>/: what `eval --adapter` reads back
        cells = [dataclasses.replace(c, adapter_dir=str(store.suite_dir(c.suite) / "adapters" / c.id)) for c in cells]
    recorded, bad = store.scan(s.name) if store.suite_dir(s.name).is_dir() else ({}, [])  # read once, used twice
    print_store_problems(store, bad)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: the running cells are recorded `interrupted`
    summary = run_grid(cells, store, executor, force=args.force, retry_failed=args.retry_failed,
                       quiet=_quiet(args), steal=args.steal_locks, recorded=recorded)
    for line in summary.notes + summary.problems:
        print(line, file=sys.stderr)
    print(summary.line(s.name, str(Store(args.results).suite_dir(s.name))))
    return 0


def cmd_eval(args) -> int:
    from bench.files import writable_folder
    from bench.run.executors.local import LocalExecutor
    from bench.run.runner import run_grid
    from bench.run.store import Store
    from bench.tasks.data import check_cells
    from bench.tools.eval_adapter import adapter_cells

    suite, cells = adapter_cells(args.adapter, args.suite, args.model, args.task, args.seed, args.label,
                                 args.data_dir, args.threads)
    check_cells(cells)
    store = Store(writable_folder(args.results, "--results"))
    signal.signal(signal.SIGTERM, _interrupt)
    summary = run_grid(cells, store, LocalExecutor(quiet=_quiet(args)), force=args.force, quiet=_quiet(args))
    for line in summary.notes + summary.problems:
        print(line, file=sys.stderr)
    record = store.read(suite.name, cells[0].id) or {}
    scores = (record.get("scores") or {}).get("metrics") or {}
    print(f"{cells[0].line()}: {record.get('status')} " + " ".join(f"{k}={v:.2f}" for k, v in scores.items()))
    print(summary.line(suite.name, str(store.suite_dir(suite.name))))
    return 0


def _interrupt(signum, frame):
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


def cmd_report(args) -> int:
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


def cmd_compare(args) -> int:
    from bench.figures import Tolerances
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


def cmd_regress(args) -> int:
    from bench.files import writable_file, writable_folder
    from bench.run.executors.local import LocalExecutor
    from bench.tools.regress import gate, load_tolerances, render

    tolerances = load_tolerances(args.tolerances)
    writable_folder(args.results, "--results")
    if args.update:
        writable_file(args.baseline, "--baseline")
    # One cell at a time, always: the baseline's timings were measured so, and cells side by side would
    # change the figures the gate warns on.
    verdict = gate(args.suite, args.baseline, args.results, tolerances, LocalExecutor(quiet=_quiet(args)),
                   update=args.update, reuse=args.reuse, quiet=_quiet(args))
    if verdict is None:
        print(f"baseline written: {args.baseline}")
        return 0
    if args.json:
        print(json.dumps(verdict.to_json(), indent=1, default=str))
    else:
        print(render(verdict, markdown=args.format == "md"))
    return 1 if verdict.failed else 0


def cmd_results(args) -> int:
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
    out = args.out or os.path.join(args.reports, f"{name}-records.{args.format}")
    writable_file(out, "--out")
    print(exchange.export(args.results, name, args.format, out))
    return 0


def cmd_list(args) -> int:
    from bench import methods, models
    from bench.plan import suite
    from bench.tasks.registry import builtin_tasks

    if args.what == "methods":
        entries = [m.describe() for m in methods.REGISTRY.values()]
        lines = [f"{e['name']:<18} {e['family']:<16} {e['description']}" for e in entries]
    elif args.what == "models":
        entries = models.describe()
        lines = [f"{e['name']:<18} {e['kind']:<16} {e['description']}" for e in entries]
    elif args.what == "tasks":
        entries = [t.describe() for t in builtin_tasks().values()]
        lines = [f"{e['name']:<18} {e['type']:<16} {e['description']}" for e in entries]
    else:
        entries = []
        for name, path in suite.suite_names().items():
            s = suite.load_suite(str(path))
            entries.append({"name": name, "path": str(path), "description": s.description})
        lines = [f"{e['name']:<18} {e['description']}" for e in entries]
    print(json.dumps(entries, indent=1, default=str) if args.json else "\n".join(lines))
    return 0


def method_sets(pairs: list[str] | None) -> dict:
    """`--set KEY=VALUE` flags as a method's settings, each value read as a YAML scalar (16, 0.1, true, null,
    all-linear) or, with commas, a list of them (q,v): the method then checks them as it checks a suite's
    overrides."""
    import yaml

    settings = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"expected KEY=VALUE, got '{pair}'", "--set")
        try:
            items = [yaml.safe_load(v) for v in text.split(",")] if "," in text else None
            settings[key.strip()] = items if items is not None else yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BadInput(f"cannot read the value of '{pair}': {e.problem or e}", "--set") from None
    return settings


def cmd_estimate(args) -> int:
    from bench.methods.base import keep_out_optional_packages

    keep_out_optional_packages([args.method])  # before anything imports peft, which imports bitsandbytes if it can
    from bench import methods
    from bench.models import resolve_model
    from bench.tools.estimate import check_inputs, estimate, prepare_to_count, render

    settings = method_sets(args.set)
    check_inputs(args.batch_size, args.seq_len, args.optimizer, args.weights_dtype, args.attention)
    methods.get(args.method, "--method")
    prepare_to_count([resolve_model(args.model, "--model").arch])  # the imports, once the input is known good
    result = estimate(args.model, args.method, args.batch_size, args.seq_len, args.optimizer, args.weights_dtype,
                      settings=settings, attention=args.attention, gradient_checkpointing=args.gradient_checkpointing)
    print(json.dumps(result, indent=1) if args.json else render(result))
    return 0


def cmd_env(args) -> int:
    from bench.env import LOCK_FILE, lock_state

    state = lock_state()
    if args.json:
        print(json.dumps(state, indent=1))
    elif not args.differs:
        where = LOCK_FILE.name if state["status"] != "unknown" else "no lock file"
        print(f"environment: {state['status']} ({where}), {len(state['packages'])} packages, "
              f"sha256 {state['sha256'][:16]}")
    for name, v in state["differs"].items():
        if not args.json:
            print(f"  {name}: locked {v['locked']}, installed {v['installed'] or 'nothing'}")
    return 1 if args.check_lock and state["status"] != "locked" else 0


def cmd_figures(args) -> int:
    from bench import figures

    if args.markdown:
        print("\n\n".join([f"## {s}\n\n{figures.markdown_table(s)}" for s in figures.SECTIONS]
                          + [f"## How a change is judged\n\n{figures.rules_table()}"]))
        return 0
    for f in figures.FIGURES.values():
        print(f"{f.key:<42} {f.unit:<9} {f.rule:<10} {f.definition.split('. ')[0].rstrip('.')}")
    return 0


def cmd_cache(args) -> int:
    from bench.tasks import cache

    where = cache.root().parent
    if args.action == "clear":
        removed, freed = cache.clear()
        print(f"removed {removed} cache file(s) (tokenised features, plan prices), {freed / 2**20:.1f} MB, "
              f"from {where}")
        return 0
    for kind in cache.KINDS:
        entries = cache.entries(kind)
        print(f"{cache.root(kind)}: {len(entries)} file(s), {sum(p.stat().st_size for p in entries) / 2**20:.1f} MB")
    print(f"(set PEFT_BENCH_CACHE to move {where})")
    return 0


def parser() -> argparse.ArgumentParser:
    from bench.report import FORMATS
    from bench.report.compare import DEFAULTS as tolerances
    from bench.run.executors import add_flags

    p = argparse.ArgumentParser(prog="peft-bench", description="Compare parameter-efficient fine-tuning methods.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite's grid (cells with an ok record are skipped)")
    run.add_argument("--suite", required=True, help="suite name (suites/NAME.yaml) or path to a YAML file")
    run.add_argument("--methods", type=_csv, help="only these methods (suite labels or registry names)")
    run.add_argument("--models", type=_csv, help="only these models (registry names, hub ids or folders)")
    run.add_argument("--tasks", type=_csv, help="only these tasks")
    run.add_argument("--seeds", type=_seeds, help="these seeds instead of the suite's, e.g. 1,2,3")
    run.add_argument("--results", default="results", help="results store folder (default: results)")
    run.add_argument("--data-dir", help="read datasets from DIR/<dataset>/<config>/<split>.jsonl instead of the hub")
    add_flags(run)
    run.add_argument("--dry-run", action="store_true", help="print the expanded grid (one line per cell, with "
                                                            "its FLOPs and estimated time) and exit")
    run.add_argument("--tflops", type=float, help="--dry-run: the rate (TFLOP/s per cell) to estimate times "
                                                  "with (default: measured by this store's records)")
    run.add_argument("--force", action="store_true", help="rerun cells that already have an ok record")
    run.add_argument("--retry-failed", action="store_true", help="rerun failed, oom and timeout cells, and cells unsupported on this machine only")
    run.add_argument("--threads", type=int, help="torch threads per cell (default: the suite's `threads`, else the "
                                                 "cores this process may use); recorded in env.threads")
    run.add_argument("--steal-locks", action="store_true",
                     help="remove the locks of this grid's cells whoever holds them (say which), then run")
    run.add_argument("--save-adapters", action="store_true",
                     help="write each trained cell's adapter to <results>/<suite>/adapters/<cell id> (peft's format "
                          "too for peft methods), for `eval --adapter`; with --force for cells already recorded")
    run.add_argument("--quiet", action="store_true", help="no progress bars (also when CI=true)")
    run.set_defaults(func=cmd_run)

    evl = sub.add_parser("eval", help="evaluate an adapter trained elsewhere as a cell of a suite (its record "
                                      "joins the suite's, so reports compare it with the methods trained here)")
    evl.add_argument("--adapter", required=True, help="a peft adapter folder or hub id, or a folder that "
                                                      "`run --save-adapters` wrote (results/<suite>/adapters/<id>)")
    evl.add_argument("--model", help="the base model (registry name, hub id or folder); default: the saved one")
    evl.add_argument("--task", help="the task to evaluate on; default: the one the adapter was trained on")
    evl.add_argument("--suite", help="the suite whose settings evaluate it and whose records it joins; default: "
                                     "the one it was trained in")
    evl.add_argument("--seed", type=int, help="the seed (a random-init base model's weights, a new head's init); "
                                              "default: the training cell's, else the suite's first")
    evl.add_argument("--label", help="its name in the report (default: the saved label and cell id, or the "
                                     "folder's name)")
    evl.add_argument("--results", default="results", help="results store folder (default: results)")
    evl.add_argument("--data-dir", help="read datasets from DIR/<dataset>/<config>/<split>.jsonl instead of the hub")
    evl.add_argument("--threads", type=int, help="torch threads (default: the cores this process may use)")
    evl.add_argument("--force", action="store_true", help="evaluate again although an ok record exists")
    evl.add_argument("--quiet", action="store_true", help="no progress bars (also when CI=true)")
    evl.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="write a suite's report from its records")
    rep.add_argument("--suite", required=True, help="suite name or YAML path (its records folder under --results)")
    rep.add_argument("--results", default="results", help="results store folder (default: results)")
    rep.add_argument("--out", default="reports", help="reports folder (default: reports)")
    rep.add_argument("--format", help=f"comma-separated formats among {', '.join(FORMATS)} (default: all)")
    rep.set_defaults(func=cmd_report)

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
    cmp.set_defaults(func=cmd_compare)

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
    reg.set_defaults(func=cmd_regress)

    res = sub.add_parser("results", help="merge stores from several machines, or export a suite's records as a table")
    res.add_argument("action", choices=["merge", "export"])
    res.add_argument("stores", nargs="*", metavar="DIR", help="merge: the stores to read (only read)")
    res.add_argument("--into", help="merge: the store to merge into (created if absent)")
    res.add_argument("--suite", help="export: suite name or YAML path")
    res.add_argument("--results", default="results", help="export: results store folder (default: results)")
    res.add_argument("--format", default="csv", choices=["parquet", "csv", "jsonl"], help="export: file format")
    res.add_argument("--out", help="export: the file to write (default: REPORTS/<suite>-records.<format>)")
    res.add_argument("--reports", default="reports", help="export: reports folder of the default --out")
    res.set_defaults(func=cmd_results)

    lst = sub.add_parser("list", help="list methods, models, tasks or suites")
    lst.add_argument("what", choices=["methods", "models", "tasks", "suites"])
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=cmd_list)

    est = sub.add_parser("estimate", help="parameters, memory and FLOPs of a training step, without weights")
    est.add_argument("--model", required=True, help="registry name, local folder with config.json, or hub id")
    est.add_argument("--method", required=True, help="registry method name")
    est.add_argument("--batch-size", type=int, default=8, help="rows per step (default: 8)")
    est.add_argument("--seq-len", type=int, default=512, help="tokens per row (default: 512)")
    est.add_argument("--optimizer", default="adamw", help="an optimizer of bench/optimizers.py: "
                     "adamw, adafactor, adafactor-tfew or sgd (default: adamw)")
    est.add_argument("--weights-dtype", "--dtype", dest="weights_dtype", default="auto",
                     help="dtype the weights are built in, the training setting weights_dtype: auto (the checkpoint's "
                          "dtype, from the shipped config; else fp32), bf16, fp16 or fp32 (default: auto)")
    est.add_argument("--attention", default="auto", help="attention implementation, the training setting attention: "
                     "auto (transformers' choice: sdpa), sdpa or eager (default: auto)")
    est.add_argument("--gradient-checkpointing", action="store_true", help="the training setting "
                     "gradient_checkpointing: layers' activations recomputed in backward, not kept")
    est.add_argument("--set", action="append", metavar="KEY=VALUE", help="a method setting, as a suite's "
                     "overrides give it (repeatable): --set r=16 --set target_modules=q,v")
    est.add_argument("--json", action="store_true", help="machine-readable output")
    est.set_defaults(func=cmd_estimate)

    fig = sub.add_parser("figures", help="every figure a record holds: unit, rule, definition (the figure registry)")
    fig.add_argument("--markdown", action="store_true", help="docs/measurement.md's tables")
    fig.set_defaults(func=cmd_figures)

    cch = sub.add_parser("cache", help="the cache (tokenised data, plan prices): where it is and how big, or clear it")
    cch.add_argument("action", choices=["info", "clear"])
    cch.set_defaults(func=cmd_cache)

    env = sub.add_parser("env", help="the installed package versions against requirements-lock.txt")
    env.add_argument("--differs", action="store_true", help="print only the packages that differ from the lock")
    env.add_argument("--check-lock", action="store_true", help="exit 1 unless every locked version is installed")
    env.add_argument("--json", action="store_true", help="machine-readable output, every installed version")
    env.set_defaults(func=cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BadInput as e:
        print(f"error: {e.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; records written so far are kept. Run the same command again to resume: "
              "recorded cells are skipped, the interrupted one runs again.", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so, with the traceback
        import traceback

        traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
