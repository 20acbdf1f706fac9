"""The tracker contract, the registry every tracker enters, and what every tracker logs of a cell.

`run --log-to NAME[,NAME..]` makes each cell the runner stores also a run of an experiment tracker, named by its
cell id, in that tracker's offline or local mode under results/<suite>/. It happens in the `run` process, as each
record is stored (bench/run/runner.py), never in cell processes: they fork, and tracker libraries start threads,
subprocesses and network clients that must not be forked (and a grid is then watchable cell by cell).

A tracker is one file in this folder that calls `register(TrackerSpec(...))` and is imported by this package's
__init__. Its library is imported only when the tracker is asked for: a missing one is one BadInput naming
--log-to, the extra and the install command, before any cell runs. Once the grid runs, a tracker's failure is
printed once and counted, and never stops the grid nor touches a record (the store holds them before any tracker
sees them).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.errors import BadInput, unknown
from bench.files import writable_folder
from bench.record import NUMBER_SECTIONS
from bench.run.store import CURVES, flatten


class Tracker(Protocol):
    def log_cell(self, record: dict, curve: dict | None, origin: str) -> None: ...

    def logged_keys(self) -> set[str]:
        """The record_key of every record this tracker's folder holds a run of (read once per run_grid)."""

    def close(self) -> None: ...


# Where a logged record comes from: this run ran its cell; this run stored it from the spool of a runner that died
# (adopted); or the store held it before this run, which skipped its cell (recorded). A resumed grid so shows
# every cell in the tracker, the ones it did not run included, each run's `origin` saying which.
ORIGINS = ("ran", "adopted", "recorded")


@dataclass(frozen=True)
class TrackerSpec:
    name: str
    package: str  # the module its library is imported as: missing, the tracker cannot start
    extra: str  # pyproject's extra that installs it
    folder: str  # where it writes, under results/<suite>/
    open: Callable[[Path, str, bool], Tracker]  # open(its folder, suite name, quiet); imports its library


TRACKERS: dict[str, TrackerSpec] = {}


def register(spec: TrackerSpec) -> TrackerSpec:
    if spec.name in TRACKERS:
        raise ValueError(f"tracker {spec.name!r} is registered twice")
    TRACKERS[spec.name] = spec
    return spec


def install_hint(spec: TrackerSpec) -> str:
    return f"pip install 'peft-bench[{spec.extra}]' (or `make install`: the lock holds every extra)"


class Trackers:
    """The trackers a run logs to; `log(record)` once the record is stored. Never raises but KeyboardInterrupt."""

    def __init__(self, opened: list[tuple[str, Tracker]], curves: Path | None = None):
        self.opened = opened
        self.curves = curves
        self.failed: set[str] = set()  # trackers whose first failure was printed
        self.missed = {name: 0 for name, _ in opened}  # cells each tracker missed since the last `notes()`
        self.known = {name: 0 for name, _ in opened}  # records not ran here that each tracker already held
        # records not ran here kept from a tracker that could not say what it held: (how many, why), by tracker
        self.unread: dict[str, tuple[int, str]] = {}

    def __bool__(self) -> bool:
        return bool(self.opened)

    def log(self, record: dict, origin: str = "ran", skip: set[str] = frozenset()) -> None:
        """Log `record` to each tracker but those named in `skip`."""
        curve = None
        if self.curves is not None:
            from bench.cell.curves import read_curve

            curve = read_curve(self.curves / f"{record['cell']['id']}.jsonl")
        for name, tracker in self.opened:
            if name not in skip:
                self._call(name, record["cell"]["id"], tracker.log_cell, record, curve, origin)

    def log_stored(self, records: list[tuple[dict, str]]) -> None:
        """Records of cells this run does not run, with their origin (ORIGINS): each logged to every tracker that
        does not hold a run of it yet (by record_key), so rerunning a grid logs nothing twice, and a grid resumed
        with a new --log-to fills the tracker with its earlier cells. A tracker that cannot say what it holds gets
        none of them (it may hold them all), which the summary says."""
        if not (self.opened and records):
            return
        held: dict[str, set[str]] = {}
        unread: set[str] = set()
        for name, tracker in self.opened:
            try:
                held[name] = tracker.logged_keys()
            except Exception as e:  # noqa: BLE001 (a tracker's failure is never the grid's)
                unread.add(name)
                self.unread[name] = (self.unread.get(name, (0, ""))[0] + len(records), f"{type(e).__name__}: {e}")
        for record, origin in records:
            key = record_key(record)
            holding = {name for name, keys in held.items() if key in keys}
            for name in holding:
                self.known[name] += 1
            self.log(record, origin, holding | unread)

    def _call(self, name: str, cell_id: str, function, *args):
        try:
            return function(*args)
        except Exception as e:  # noqa: BLE001 (a tracker's failure is never the grid's)
            self.missed[name] += 1
            if name not in self.failed:
                self.failed.add(name)
                print(f"--log-to {name}: could not log cell {cell_id} ({type(e).__name__}: {e}); the grid goes "
                      "on, its records are stored, and the cells this tracker misses are counted at the end",
                      file=sys.stderr, flush=True)
            return None

    def notes(self) -> list[str]:
        """A line per tracker that missed cells, or already held cells recorded earlier, since the last call (the
        runner adds them to its summary)."""
        lines = [f"--log-to {name}: {n} cell(s) not logged (the first error is printed above)"
                 for name, n in self.missed.items() if n]
        lines += [f"--log-to {name}: {n} cell(s) recorded earlier were logged already, not logged again"
                  for name, n in self.known.items() if n]
        lines += [f"--log-to {name}: {n} cell(s) recorded earlier not logged: which cells it holds could not be "
                  f"read ({why}), and logging them could log some twice" for name, (n, why) in self.unread.items()]
        self.unread = {}
        self.missed = dict.fromkeys(self.missed, 0)
        self.known = dict.fromkeys(self.known, 0)
        return lines

    def close(self) -> None:
        """Each tracker closed once: a second call does nothing."""
        opened, self.opened = self.opened, []
        for name, tracker in opened:
            try:
                tracker.close()
            except Exception as e:  # noqa: BLE001
                print(f"--log-to {name}: closing failed ({type(e).__name__}: {e})", file=sys.stderr)


def open_trackers(names: list[str] | None, suite_dir: Path, suite: str, quiet: bool) -> Trackers:
    """The trackers `--log-to` names, each opened on its folder under `suite_dir`; BadInput, before any cell runs,
    for an unknown name, a library not installed, a folder it cannot write or a tracker that fails to start."""
    opened: list[tuple[str, Tracker]] = []
    for name in dict.fromkeys(names or []):
        if name not in TRACKERS:
            raise unknown("tracker", name, TRACKERS, "--log-to")
        spec = TRACKERS[name]
        if not _importable(spec.package):
            raise BadInput(f"{name} needs the package {spec.package!r}, which is not installed: install the extra "
                           f"{spec.extra!r}: {install_hint(spec)}", "--log-to")
        folder = writable_folder(suite_dir / spec.folder, "--log-to")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            opened.append((name, spec.open(folder, suite, quiet)))  # imports the library, after its settings
        except Exception as e:  # noqa: BLE001 (whatever the library raises, the user reads one line)
            for _, tracker in opened:
                tracker.close()
            hint = f" (reinstall the extra {spec.extra!r}: {install_hint(spec)})" if isinstance(e, ImportError) else ""
            raise BadInput(f"{name} could not start in {folder}: {type(e).__name__}: {e}{hint}", "--log-to") from None
        if not quiet:
            print(f"--log-to {name}: each cell as a run in {folder}", file=sys.stderr)
    trackers = Trackers(opened, suite_dir / CURVES)
    if trackers:  # closed when the process ends, however the run ends (done, interrupted, the store full)
        atexit.register(trackers.close)
    return trackers


def _importable(package: str) -> bool:
    """Whether `package` can be imported, without importing it: trackers set their settings (folders, offline
    mode) in the environment first, and some libraries read them once, when imported."""
    if package in sys.modules:
        return sys.modules[package] is not None  # None: importing it fails (how a test removes a package)
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def record_key(record: dict) -> str:
    """What tells one record from every other: 16 hex digits of the SHA-256 of its cell id and creation time
    (a rerun of a cell is another record, and is logged again)."""
    text = f"{record['cell']['id']}\n{record.get('created_at')}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_params(record: dict, origin: str) -> dict[str, Any]:
    """The cell's resolved config flattened: `train.lr`, `method.config.r`, ...; lists as JSON text, and the
    cell's own fields (label, method, model, task, seed, status), `origin` (ORIGINS) and `record_key` beside it."""
    cell = record["cell"]
    params: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, (dict, list, tuple)):
            params[prefix] = json.dumps(value)
        else:
            params[prefix] = value

    walk("", cell.get("config") or {})
    for key in ("id", "label", "method", "model", "task", "seed"):
        params[f"cell.{key}"] = cell.get(key)
    params["status"] = record["status"]
    params["origin"] = origin
    params["record_key"] = record_key(record)
    return params


def figures(record: dict) -> dict[str, float]:
    """Every numeric figure of an ok record, as `flatten` gives them (params/memory/time/flops/train, and the
    scores' metrics), named `section/figure`; nothing for a record that is not ok (it holds no result)."""
    if record["status"] != "ok":
        return {}
    row = flatten(record)
    found = {}
    for key, value in row.items():
        section, _, figure = key.partition(".")
        if figure and (section in NUMBER_SECTIONS or section == "scores") and _number(value):
            found[f"{section}/{figure}"] = float(value)
    return found


def curve_steps(curve: dict | None) -> list[tuple[int, dict[str, float]]]:
    """The curve as (step, {metric: value}) in step order, a step's training point and evaluation together:
    curve/loss, curve/lr, curve/grad_norm, curve/tokens_per_s, and curve/eval_<split> (the main metric)."""
    by_step: dict[int, dict[str, float]] = {}
    for point in (curve or {}).get("train", []):
        values = {f"curve/{k}": float(point[k]) for k in ("loss", "lr", "grad_norm", "tokens_per_s")
                  if _number(point.get(k))}
        by_step.setdefault(point["step"], {}).update(values)
    for point in (curve or {}).get("evals", []):
        if _number(point.get("eval")):
            by_step.setdefault(point["step"], {})[f"curve/eval_{point.get('split') or 'main'}"] = float(point["eval"])
    return sorted((step, values) for step, values in by_step.items() if values)


def last_step(record: dict, curve: dict | None) -> int:
    """The step the figures are logged at: the cell's last training step (0 when it trained none)."""
    steps = [s for s, _ in curve_steps(curve)]
    trained = (record.get("train") or {}).get("steps")
    return max(steps + ([trained] if isinstance(trained, int) else []) + [0])


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
