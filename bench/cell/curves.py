"""Training curves: how a cell's training went, not only where it ended.

A cell writes its curve as it trains, one JSON line at a time, to results/<suite>/curves/<cell id>.jsonl, so a cell
killed or timed out keeps the curve up to its last read of the losses:

- a header: {"cell": id, "every": N, "steps": total}, N = ceil(steps / MAX_POINTS) (at most MAX_POINTS points
  however long the run);
- a point per N steps: {"step": last step of the window, "loss": mean of the window's losses, "lr": the learning
  rate of its last step, "grad_norm": mean of its steps' total gradient norms before clipping (null without
  clipping: the norm is then not computed), "tokens_per_s": the window's non-padding tokens / its wall seconds
  (host time between reads of the losses, evaluations excluded; on CUDA the reads wait for the device, so a
  window's seconds are its share of the time between two reads)};
- a point per evaluation during training: {"step": n, "eval": the main metric, "split": "selection" or "main"}.

Nothing here reads the device: the training loop hands over host numbers at its reads of the losses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MAX_POINTS = 500


class CurveWriter:
    """Appends a cell's curve to its file (nothing at all without a path)."""

    def __init__(self, path: str | Path | None, steps: int, cell_id: str, eval_split: str = "main"):
        self.every = max(1, math.ceil(steps / MAX_POINTS))
        self.eval_split = eval_split
        self.window: list[tuple[float, float, float | None, int, float]] = []
        self.last_step = 0  # the last step handed over: where a partial window's point sits
        self.file = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w")  # a rerun's curve replaces the earlier one, as its record does
            self._write({"cell": cell_id, "every": self.every, "steps": steps})

    def steps(self, first: int, losses: list[float], lrs: list[float], norms: list[float | None],
              tokens: list[int], seconds: float) -> None:
        """Steps first, first + 1, ... (1-based) as read together, `seconds` of wall time among them."""
        share = seconds / len(losses) if losses else 0.0
        for i, loss in enumerate(losses):
            self.window.append((loss, lrs[i], norms[i], tokens[i], share))
            self.last_step = first + i
            if self.last_step % self.every == 0:
                self._point(self.last_step)

    def evaluation(self, step: int, score: float | None) -> None:
        self._write({"step": step, "eval": score, "split": self.eval_split})

    def close(self) -> None:
        """The last partial window, at the last step handed over, then the file closed (also when training stopped
        early, or failed: then again by the cell, which does nothing once closed)."""
        if self.window:
            self._point(self.last_step)
        if self.file is not None:
            self.file.close()
            self.file = None

    def _point(self, step: int) -> None:
        losses, lrs, norms, tokens, seconds = zip(*self.window)
        self.window = []
        known = [n for n in norms if n is not None]
        self._write({"step": step, "loss": sum(losses) / len(losses), "lr": lrs[-1],
                     "grad_norm": sum(known) / len(known) if known else None,
                     "tokens_per_s": sum(tokens) / sum(seconds) if sum(seconds) > 0 else None})

    def _write(self, line: dict) -> None:
        if self.file is not None:
            finite = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in line.items()}
            self.file.write(json.dumps(finite) + "\n")
            self.file.flush()


def read_curve(path: str | Path) -> dict | None:
    """{"every", "steps", "train": [points], "evals": [points]} of a curve file; None when it is absent or its
    header unreadable; a torn last line (a cell killed mid-write) is left out."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            continue
    if not parsed or not isinstance(parsed[0], dict) or "every" not in parsed[0]:
        return None
    points = [p for p in parsed[1:] if isinstance(p, dict) and isinstance(p.get("step"), int)]
    return {"every": parsed[0]["every"], "steps": parsed[0].get("steps"),
            "train": [p for p in points if "loss" in p], "evals": [p for p in points if "eval" in p]}
