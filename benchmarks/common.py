"""What the benchmark scripts share: the machine line printed with their numbers, the environment of the child
processes they start, their temporary work folder, the suite files and worker processes they write and run, and
the random-init checkpoints and long-input task of the GPU checks. Nothing here imports torch or `bench` at
module level: a script may point `bench` at another source folder (--source) before its first import."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

SMOKE = False  # a helper module, not a benchmark script (tests/test_benchmarks.py)
REPO = Path(__file__).resolve().parent.parent
LAUNCHED = "BENCHMARK_LAUNCHED"  # the parent's time.time() just before it started a worker process
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def version(package: str) -> str:
    """The installed version, read from its metadata (importing torch to ask would cost seconds)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    """One line: CPU model, usable and online cores, Python, torch, transformers and peft, the OS."""
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {cpu}; {cores} usable cores ({os.cpu_count()} online); Python {platform.python_version()}, "
            f"torch {version('torch')}, transformers {version('transformers')}, peft {version('peft')}; "
            f"{platform.platform()}")


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages: how busy the machine was (shared cores distort timings)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def print_header(title: str, script: str | Path, argv: list[str], source: Path = REPO) -> None:
    """The title, the machine, the command that reproduces the run, and which code it measures."""
    print(title)
    print(machine())
    python = Path(sys.executable)
    python = os.path.relpath(python, REPO) if python.is_relative_to(REPO) else str(python)
    print("reproduce (from the repository root): PYTHONPATH=. " + shlex.join([python, os.path.relpath(script, REPO),
                                                                              *argv]))
    if source != REPO:
        print(f"measuring the bench package in {source}")


def use_source(source: Path | str | None) -> Path:
    """The folder whose `bench` package a script measures (default: this checkout), first on this process's path."""
    folder = Path(source or REPO).resolve()
    sys.path.insert(0, str(folder))
    return folder


def child_env(source: Path, cache: Path | None = None, **overrides: str | None) -> dict:
    """The environment of a child process that runs `source`'s bench: it first on PYTHONPATH, its own cache folder
    (the tokenised data and plan prices it makes stay in the benchmark's folder), offline, CI (no progress bars).
    `overrides` set variables; None removes one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [env.get("PYTHONPATH")])])
    if cache is not None:
        env["PEFT_BENCH_CACHE"] = str(cache)
    env.update(OFFLINE, CI="true")
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@contextlib.contextmanager
def work_folder(prefix: str, keep: bool = False, given: str | Path | None = None):
    """The folder a benchmark writes everything into: `given` (created, never removed), else a temporary one,
    removed at the end unless `keep` (then its path is printed)."""
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def write_suite(folder: Path, name: str, **fields) -> Path:
    """`folder/name.yaml`: a suite of the given fields (methods, models, tasks, seeds, train, ...), as JSON (which is
    YAML), so that every value is written as Python holds it."""
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, **fields}, indent=1) + "\n")
    return path


def write_json(path: Path, data: dict) -> None:
    """Written whole or not at all: a worker's "result written" moment is this file's mtime."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, default=str))
    os.replace(partial, path)


def run_checked(cmd: list, what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` with its output captured; a failure ends the benchmark with the command and its output's tail."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({shlex.join(map(str, cmd))}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_worker(script: str | Path, mode: str, spec: dict, out: Path, source: Path, env: dict) -> dict:
    """`python SCRIPT --worker MODE --spec JSON --out OUT --source SOURCE` in `source`, a fresh process; its JSON
    result, with `wall_s` (from just before the start to the result file's mtime) and `process_s` (to its exit)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", mode, "--spec", json.dumps(spec),
           "--out", str(out), "--source", str(source)]
    launched = time.time()
    run_checked(cmd, f"{mode} worker", cwd=source, env={**env, LAUNCHED: repr(launched)})
    ended = time.time()
    if not out.is_file():
        raise SystemExit(f"{mode} worker wrote no result ({shlex.join(cmd)})")
    result = json.loads(out.read_text())
    result.update(wall_s=out.stat().st_mtime - launched, process_s=ended - launched, cmd=cmd)
    return result


def since_launch() -> float:
    """Seconds since the parent started this worker process (run_worker)."""
    return time.time() - float(os.environ[LAUNCHED])


def short_path(filename: str, *roots: Path) -> str:
    """A source file's name as `package/module.py`: site-packages, the standard library and the roots stripped."""
    filename = re.sub(r"^.*/site-packages/", "", filename)
    filename = re.sub(r"^.*/lib/python[\d.]+/", "", filename)
    for root in roots:
        if filename.startswith(f"{root}/"):
            return filename[len(str(root)) + 1:]
    return filename


def or_na(value, spec: str) -> str:
    """`value` formatted by `spec`, or "n/a" as wide as the spec asks (a figure that was not measured)."""
    return format(value, spec) if value is not None else format("n/a", ">" + re.match(r"\d*", spec).group())


def mib(value, spec: str = ".0f") -> str:
    """Bytes in MiB, or "–" where there is no figure."""
    return format(value / 2**20, spec) if value else "–"


def save_random_model(folder: Path, config, auto_class, dtype) -> int:
    """A random-init checkpoint (seed 0) of `config` with the tiny offline tokenizer (every synthetic word one
    token), saved in `folder`: no hub. Returns its parameter count."""
    import torch

    from bench import tiny

    torch.manual_seed(0)
    model = auto_class.from_config(config).to(dtype)
    model.save_pretrained(folder)
    tiny.tokenizer().save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def write_long_task(folder: Path, words_per_row: int, rows: dict[str, int], description: str,
                    main_metric: bool = True) -> Path:
    """A binary classification task whose rows are `words_per_row` random lexicon words (each one token, so rows
    fill a length), `rows` per split, in `folder`; its tasks.yaml."""
    from bench.tasks.synthetic import lexicon

    words, rng = sorted(set(lexicon())), random.Random(0)
    for split, n in rows.items():
        with (folder / f"{split}.jsonl").open("w") as f:
            for _ in range(n):
                row = [rng.choice(words) for _ in range(words_per_row)]
                f.write(json.dumps({"text": " ".join(row), "label": int(row[0] < row[-1])}) + "\n")
    path = folder / "tasks.yaml"
    path.write_text(f"tasks:\n  - name: long-binary\n    description: {description}\n"
                    "    type: classification\n    source: {files: {train: train.jsonl, eval: eval.jsonl}}\n"
                    "    text: [text]\n    label: label\n    labels: ['0', '1']\n    verbalizers: ['no', 'yes']\n"
                    "    template: '{text} label:'\n    metrics: [accuracy]\n"
                    + ("    main_metric: accuracy\n" if main_metric else ""))
    return path
