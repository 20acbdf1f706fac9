"""Evaluation batch order: the harness's plan against the examples' own order, side by side in one process.

    PYTHONPATH=. .venv/bin/python benchmarks/eval_order.py [--model minilm-l6] [--tasks sst2,cola,rte]
                                                           [--batch-sizes 32,128,256] [--rounds 1]
                                                           [--max-length 256] [--threads N] [--data-dir DIR] [--smoke]

The harness evaluates (bench.cell.evaluate.predict) in two groups, the first 2 × batch examples and then the
rest, each in batches taken longest first, and gives the predictions back in order. "In order" is the same
function with the sort replaced by the examples' own order (bench.cell.evaluate._longest_first patched), which
is how evaluation batched before. For each (task, batch size), on the task's whole validation split:

- padded positions: rows × width summed over the batches (what the forward passes compute on), counted from
  the collated batches: exact, the same on any machine;
- seconds of one evaluation under each plan, interleaved in ABBA blocks (`--rounds` blocks; the median per
  plan), one warm-up evaluation first, and their ratio (sorted / in order);
- whether the two plans predict the same labels.

The model is a real pretrained encoder (MiniLM-L6, from the PyPI package) with a seeded random head, and the
data is GLUE's from ../shared/data (or --data-dir). Without that folder it measures the tiny encoder on the
synthetic polarity task, which shows the mechanism but not a real length distribution.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, loadavg, print_header  # noqa: E402


def in_order(items, size, length, predict_batch):
    """evaluate._longest_first without the sort: batches in the examples' order."""
    out = []
    for start in range(0, len(items), size):
        out += predict_batch(items[start: start + size])
    return out


def measure(bundle, evalset, task, batch_size: int, rounds: int) -> dict:
    from bench.cell import evaluate

    sorted_plan = evaluate._longest_first
    plans = {"sorted": sorted_plan, "in order": in_order}
    positions, seconds, preds = {}, {name: [] for name in plans}, {}
    collate = evaluate.collate

    def counting(chunk, *args, **kwargs):
        batch = collate(chunk, *args, **kwargs)
        counted[0] += batch["input_ids"].numel()
        return batch

    try:
        evaluate.collate = counting
        for name in ["sorted", "in order"] + ["sorted", "in order", "in order", "sorted"] * rounds:
            evaluate._longest_first = plans[name]
            counted = [0]
            start = time.perf_counter()
            out = evaluate.predict(bundle, bundle.model, evalset, task, batch_size, "cpu")
            took = time.perf_counter() - start
            if name in preds:
                seconds[name].append(took)
            else:  # the first evaluation of each plan is its warm-up
                preds[name], positions[name] = out, counted[0]
    finally:
        evaluate._longest_first, evaluate.collate = sorted_plan, collate
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {"positions": positions, "seconds": median, "ratio": median["sorted"] / median["in order"],
            "same": preds["sorted"] == preds["in order"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--tasks", default="sst2,cola,rte")
    parser.add_argument("--batch-sizes", default="32,128,256")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA blocks per (task, batch size); default 1")
    parser.add_argument("--max-length", type=int, default=256, help="as suites/glue.yaml (default 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny encoder on synth-polarity, batches of 32, one block (what the tests run)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.rounds = "32", 1
    if args.rounds < 1:
        parser.error("--rounds: at least 1")

    import torch

    from bench.models import quiet_libraries
    from bench.models import load_bundle, resolve_model
    from bench.tasks.registry import builtin_tasks
    from bench.tasks.data import load_rows
    from bench.tasks.features import eval_features

    print_header("Evaluation batch order: longest first in two groups (the harness) vs the examples' order",
                 __file__, sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tasks, data_dir = args.model, args.tasks.split(","), args.data_dir
    if args.smoke or not (Path(data_dir) / "glue").is_dir():
        why = "--smoke" if args.smoke else f"no GLUE data in {data_dir}"
        print(f"{why}: the tiny encoder on synth-polarity instead")
        model, tasks, data_dir = "tiny-encoder", ["synth-polarity"], None
    print(f"torch threads: {torch.get_num_threads()}; load average at start: {loadavg()}")
    print(f"{'task':<16}{'rows':>6}{'batch':>7}{'positions in order':>20}{'sorted':>10}{'ratio':>7}"
          f"{'s in order':>12}{'s sorted':>10}{'ratio':>7}  same predictions")
    for name in tasks:
        task = builtin_tasks()[name]
        bundle = load_bundle(resolve_model(model), task.type, task.num_labels, seed=0)
        evalset = eval_features(task, bundle, load_rows(task, "eval", data_dir), args.max_length)
        for size in map(int, args.batch_sizes.split(",")):
            m = measure(bundle, evalset, task, size, args.rounds)
            pos, sec = m["positions"], m["seconds"]
            print(f"{name:<16}{len(evalset.features):>6}{size:>7}{pos['in order']:>20,}{pos['sorted']:>10,}"
                  f"{pos['sorted'] / pos['in order']:>7.2f}{sec['in order']:>12.2f}{sec['sorted']:>10.2f}"
                  f"{m['ratio']:>7.2f}  {'yes' if m['same'] else 'NO'}")
    print(f"load average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
