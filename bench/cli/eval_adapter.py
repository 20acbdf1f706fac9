"""`peft-bench eval`: an adapter trained elsewhere, evaluated as a cell of a suite."""

from __future__ import annotations

import signal
import sys

from bench.cli.common import interrupt, quiet


def add(sub) -> None:
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
    evl.set_defaults(func=command)


def command(args) -> int:
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
    signal.signal(signal.SIGTERM, interrupt)
    summary = run_grid(cells, store, LocalExecutor(quiet=quiet(args)), force=args.force, quiet=quiet(args))
    for line in summary.notes + summary.problems:
        print(line, file=sys.stderr)
    record = store.read(suite.name, cells[0].id) or {}
    scores = (record.get("scores") or {}).get("metrics") or {}
    print(f"{cells[0].line()}: {record.get('status')} " + " ".join(f"{k}={v:.2f}" for k, v in scores.items()))
    print(summary.line(suite.name, str(store.suite_dir(suite.name))))
    return 0
