"""How long the commands a user types before any work take, as ratios to `python -c "import torch"` in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/latency.py                      # this checkout
    PYTHONPATH=. .venv/bin/python benchmarks/latency.py --smoke              # one command, one round (tests)
    PYTHONPATH=. .venv/bin/python benchmarks/latency.py --before 49b843e     # and a commit before, side by side

Each command runs in a fresh process (the interpreter's start and exit included, as a user waits for them), with
the torch import timed around it, interleaved, `--repeat` times; the table gives the median seconds and the median
over rounds of command / torch import. `--before REV` checks REV out into a temporary git worktree and runs the same
commands from its source (PYTHONPATH), through the same interpreter and packages, in the same rounds. A dry-run is
timed cold (an empty cache folder: what a first dry-run costs) and, where the code caches plan prices, warm (the
same command again).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, child_env, loadavg, print_header  # noqa: E402

BASELINE = ("import torch", ["-c", "import torch"])
COMMANDS = [  # (name, arguments to python, cache: "cold" empties the cache folder first, "warm" keeps it)
    ("import torch, transformers, peft", ["-c", "import torch, transformers, peft"], None),
    ("estimate --model llama-2-70b --method lora", ["-m", "bench", "estimate", "--model", "llama-2-70b",
                                                    "--method", "lora"], None),
    ("list methods", ["-m", "bench", "list", "methods"], None),
    ("run --suite smoke --dry-run (cold)", ["-m", "bench", "run", "--suite", "smoke", "--dry-run"], "cold"),
    ("run --suite smoke --dry-run (warm)", ["-m", "bench", "run", "--suite", "smoke", "--dry-run"], "warm"),
    ("run --suite fewshot --dry-run (cold)", ["-m", "bench", "run", "--suite", "fewshot", "--dry-run"], "cold"),
    ("run --suite fewshot --dry-run (warm)", ["-m", "bench", "run", "--suite", "fewshot", "--dry-run"], "warm"),
]
SMOKE_COMMANDS = [COMMANDS[2]]  # the quickest, so that --smoke takes seconds


def timed(args: list[str], source: Path, cache: Path, results: Path) -> float:
    env = child_env(source, cache)
    extra = ["--results", str(results)] if "run" in args else []
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args, *extra], cwd=source, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed in {source}: {' '.join(args)}\n{done.stderr[-2000:]}")
    return seconds


def caches_plans(source: Path) -> bool:
    """Whether that source keeps plan prices on disk (before it did, a warm dry-run was a cold one)."""
    cache = source / "bench" / "tasks" / "cache.py"
    return cache.is_file() and '"plan"' in cache.read_text()


def measure(commands, sources: dict[str, Path], repeat: int, tmp: Path) -> dict:
    """{(version, name): [(seconds, torch import seconds of the same round)]}, interleaved round by round."""
    times: dict = {}
    for round_ in range(repeat):
        for version, source in sources.items():
            cache, results = tmp / f"cache-{version}", tmp / f"results-{version}"
            for name, args, mode in commands:
                if mode == "warm" and not caches_plans(source):
                    continue  # the same as cold there
                if mode == "cold":
                    subprocess.run(["rm", "-rf", str(cache)], check=True)
                torch_s = timed(BASELINE[1], source, cache, results)
                times.setdefault((version, name), []).append((timed(args, source, cache, results), torch_s))
            print(f"round {round_ + 1}/{repeat} of {version}: done (load {loadavg()})", file=sys.stderr, flush=True)
    return times


def table(commands, versions: list[str], times: dict) -> str:
    head = "| command | " + " | ".join(f"{v}: s | {v}: × import torch" for v in versions) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(versions)]
    for name, _, _ in commands:
        cells = []
        for v in versions:
            runs = times.get((v, name))
            seconds = f"{statistics.median(s for s, _ in runs):.2f}" if runs else "–"
            ratio = f"{statistics.median(s / t for s, t in runs):.1f}" if runs else "–"
            cells += [seconds, ratio]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    torch_s = [t for runs in times.values() for _, t in runs]
    lines.append(f"\n`python -c \"import torch\"`: median {statistics.median(torch_s):.2f} s over {len(torch_s)} runs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", help="a git revision to measure side by side (a temporary worktree)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--smoke", action="store_true", help="one quick command, one round (what the tests run)")
    args = p.parse_args(argv)
    commands = SMOKE_COMMANDS if args.smoke else COMMANDS
    repeat = 1 if args.smoke else args.repeat
    print_header("Latency of the planning commands", __file__, argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="peft-bench-latency-") as tmp:
        tmp = Path(tmp)
        sources = {"now": REPO}
        if args.before:
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tmp / "before"),
                            args.before], check=True)
            sources = {"before": tmp / "before", **sources}
        try:
            times = measure(commands, sources, repeat, tmp)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "before")],
                               check=False)
        print(table(commands, list(sources), times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
