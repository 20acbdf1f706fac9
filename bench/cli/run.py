"""`peft-bench run`: a suite's grid through an executor into the results store."""

from __future__ import annotations

import dataclasses
import signal
import sys

from bench.cli.common import csv_list, interrupt, print_store_problems, quiet, seed_list
from bench.fmt import counted


def add(sub) -> None:
    from bench.run.executors import add_flags

    run = sub.add_parser("run", help="run a suite's grid (cells with an ok record are skipped)")
    run.add_argument("--suite", required=True, help="suite name (suites/NAME.yaml) or path to a YAML file")
    run.add_argument("--methods", type=csv_list, help="only these methods (suite labels or registry names)")
    run.add_argument("--models", type=csv_list, help="only these models (registry names, hub ids or folders)")
    run.add_argument("--tasks", type=csv_list, help="only these tasks")
    run.add_argument("--seeds", type=seed_list, help="these seeds instead of the suite's, e.g. 1,2,3")
    run.add_argument("--results", default="results", help="results store folder (default: results)")
    run.add_argument("--data-dir", help="read datasets from DIR/<dataset>/<config>/<split>.jsonl instead of the hub")
    add_flags(run)
    run.add_argument("--dry-run", action="store_true", help="print the expanded grid (one line per cell, with "
                                                            "its FLOPs and estimated time) and exit")
    run.add_argument("--tflops", type=float, help="--dry-run: the rate (TFLOP/s per cell) to estimate times "
                                                  "with (default: measured by this store's records)")
    run.add_argument("--gpu", help="--dry-run: estimate times at the training rate measured on this GPU "
                                   "(bench/tools/plan_cost.py GPU_RATES: h200)")
    run.add_argument("--force", action="store_true", help="rerun cells that already have an ok record")
    run.add_argument("--retry-failed", action="store_true", help="rerun failed, oom and timeout cells, and cells "
                                                                  "unsupported on this machine only")
    run.add_argument("--threads", type=int, help="torch threads per cell (default: the suite's `threads`, else the "
                                                 "cores this process may use); recorded in env.threads")
    run.add_argument("--steal-locks", action="store_true",
                     help="remove the locks of this grid's cells whoever holds them (say which), then run")
    run.add_argument("--save-adapters", action="store_true",
                     help="write each trained cell's adapter to <results>/<suite>/adapters/<cell id> (peft's format "
                          "too for peft methods), for `eval --adapter`; with --force for cells already recorded")
    run.add_argument("--log-to", type=csv_list, metavar="TRACKER[,..]",
                     help="also log each cell, as it is stored, as a run of these trackers (tensorboard, mlflow, "
                          "wandb, trackio; offline, under <results>/<suite>/; one extra each: docs/trackers.md)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (also when CI=true)")
    run.set_defaults(func=command)


def command(args) -> int:
    from bench.errors import BadInput
    from bench.files import writable_folder
    from bench.plan import grid, suite
    from bench.plan.kernels import check_kernels
    from bench.run.executors import given_flags, make_executor
    from bench.run.runner import plan, run_grid
    from bench.run.store import Store
    from bench.run.trackers import open_trackers
    from bench.tasks.data import check_cells
    from bench.tools.plan_cost import predicted_memory

    s = suite.load_suite(args.suite, args.data_dir)
    executor = make_executor(args.executor, quiet(args), given_flags(args), predicted_memory)

    def expand(chosen: dict | None = None) -> list:
        return grid.expand(s, args.methods, args.models, args.tasks, args.seeds,
                           args.threads if args.threads is not None else executor.threads_per_cell,
                           executor.slots or 1, chosen)

    cells = expand()
    if args.dry_run:
        from bench.tools.plan_cost import print_plan

        if s.sweep_seeds is not None:  # the second stage's setting is not chosen yet: priced as the first one
            stand_in = {(c.label, c.model.name, c.task.name): c.sweep for c in reversed(cells) if c.sweep}
            second = [c for c in expand(stand_in) if c.sweep_stage == 2]
            print(f"second stage: {counted(len(second), 'cell')} (the chosen setting on the other seeds), priced "
                  "here as each sweep's first setting", file=sys.stderr)
            cells += second
        store = Store(args.results)
        print_plan(cells, executor, args.tflops, store, args.gpu)
        todo = plan(cells, store, args.force, args.retry_failed)[0]  # the run refuses among these only
        refused = getattr(executor, "refusals", lambda cells: [])(todo)  # optional in the contract
        for error in refused:  # every one, where the run stops at the first
            print(f"refused: {error.message}", file=sys.stderr)
        if refused:
            raise BadInput(f"{len(refused)} of {counted(len(todo), 'cell')} to run would be refused (above): `run` "
                           "stops before any cell starts", refused[0].where, refused[0].choices)
        return 0
    check_cells(cells)
    check_kernels(cells, s.path, getattr(executor, "cells_on_gpu", None))  # optional in the contract
    store = Store(writable_folder(args.results, "--results"))
    recorded, bad = store.scan(s.name) if store.suite_dir(s.name).is_dir() else ({}, [])  # read once, used twice
    print_store_problems(store, bad)
    trackers = open_trackers(args.log_to, store.suite_dir(s.name), s.name, quiet(args))  # BadInput before any cell
    signal.signal(signal.SIGTERM, interrupt)  # stop like Ctrl-C: the running cells are recorded `interrupted`

    def run(part: str, some: list, known: dict | None = None) -> None:
        """Run cells through the executor into the store, and say how it went (`part`: which part of the run)."""
        summary = run_grid([placed(c, store, args.save_adapters) for c in some], store, executor, force=args.force,
                           retry_failed=args.retry_failed, quiet=quiet(args), steal=args.steal_locks,
                           recorded=known, trackers=trackers)
        for line in summary.notes + summary.problems:
            print(line, file=sys.stderr)
        print(part + summary.line(s.name, str(store.suite_dir(s.name))))

    stages = [c for c in cells if c.stage]
    if stages:  # before the cells that start from their saved states
        run("stages: ", stages, recorded)
        cells = [c for c in cells if not c.stage]
    kept = [c for c in cells if c.keeps_state]
    if kept and len(kept) < len(cells):  # the cells other tasks start from, before those
        run("cells other tasks start from: ", kept, recorded)
        cells = [c for c in cells if not c.keeps_state]
    run("", cells, recorded)
    if s.sweep_seeds is not None:
        second_stage(s.name, cells, expand, store, run)
    return 0


def placed(cell, store, save_adapters: bool):
    """Where a cell writes beside its record: its training curve in results/<suite>/curves/<id>.jsonl; a stage
    cell saves its state, and a cell starting from it reads it, in results/<suite>/stages/<stage id>; with
    --save-adapters, any other trained cell its adapter in results/<suite>/adapters/<id> (what `eval --adapter`
    reads back). A cell other tasks start from saves its state as a stage does."""
    from bench.run.store import CURVES

    folder = store.suite_dir(cell.suite)
    cell = dataclasses.replace(cell, curve_path=str(folder / CURVES / f"{cell.id}.jsonl"))
    if cell.stage or cell.keeps_state:
        cell = dataclasses.replace(cell, adapter_dir=str(folder / "stages" / cell.id))
    if cell.init_from:
        cell = dataclasses.replace(cell, init_dir=str(folder / "stages" / cell.init_from))
    if cell.stage_refs:
        cell = dataclasses.replace(cell, stages_dir=str(folder / "stages"))
    if save_adapters and not cell.adapter_dir:
        cell = dataclasses.replace(cell, adapter_dir=str(folder / "adapters" / cell.id))
    return cell


def second_stage(name: str, first: list, expand, store, run) -> None:
    """Two-stage sweeps: choose each sweep's setting on the selection split of the first stage's records (all of
    them, recorded now), then run the chosen setting on the suite's other seeds. Resumable like the first: the
    choice is made from first-stage records only, so it is the same on every rerun."""
    from bench.plan.selection import choose, chosen_settings

    records, _ = store.records(name)
    ran = {c.id for c in first}
    chosen = chosen_settings(choose([r for r in records if r["cell"]["id"] in ran]))
    cells = [c for c in expand(chosen) if c.sweep_stage == 2]
    if not cells:
        print("second stage: no setting could be chosen (no first-stage cell ended ok)", file=sys.stderr)
        return
    run("second stage: ", cells)
