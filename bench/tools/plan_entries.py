"""What an entry of the disk cache's `plan` folder (bench/tasks/cache.py) must be to be read: the shape its writer
stores. An entry that is not (edited by hand, a number turned NaN, infinite or negative, a list where a section was
stored) is damaged: cache.lookup drops it and the plan computes it again, so no price, prompt length or memory
prediction (a packed cell's budget, a Slurm job's memory) is ever taken from a damaged entry.

Each check takes the JSON value as read (json.loads, which reads NaN and Infinity as floats) and says whether it is
what its writer stores; plan_cost and prompt_lengths pass them to cache.lookup.
"""

from __future__ import annotations

import math


def count(value, positive: bool = False) -> bool:
    """A count of bytes or FLOPs: an int (not a bool), at least 0 (above 0 where `positive`)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= (1 if positive else 0)


def step_price(value) -> bool:
    """plan_cost.price_shapes' entry: [FLOPs of a training step, of one sequence's forward pass, of the selection
    before training, why unknown], the FLOPs each a count or null (unknown, with its reason)."""
    return (isinstance(value, list) and len(value) == 4 and isinstance(value[3], str)
            and all(v is None or count(v) for v in value[:3]))


def memory(value) -> bool:
    """plan_cost.predicted_memory's entry: null (no prediction), or the memory section `estimate` predicts: its
    `*_bytes` counts (each a count or null), `predicted_peak_bytes` among them and above 0 where known, `shards`,
    where sharded, a count above 0, `not_modelled` and `upper_bound` lists of texts (where the step departs from
    a GPU's; why the prediction bounds the peak from above) and `eval_unknown` a text or null (why eval_peak_bytes is
    unknown)."""
    if value is None:
        return True
    if not isinstance(value, dict) or "predicted_peak_bytes" not in value:
        return False
    peak = value["predicted_peak_bytes"]
    reasons = [value.get("not_modelled", []), value.get("upper_bound", [])]
    return ((peak is None or count(peak, positive=True)) and ("shards" not in value or count(value["shards"], True))
            and all(isinstance(found, list) and all(isinstance(reason, str) for reason in found) for found in reasons)
            and isinstance(value.get("eval_unknown"), (str, type(None)))
            and all(v is None or count(v) for k, v in value.items() if k.endswith("_bytes")))


def example_tokens(value) -> bool:
    """prompt_lengths.example_tokens' entry: [mean tokens of one example, of a prompt alone, of an example's longest
    answer option (each a finite number above 0; the last two null for a task without answer options), how
    measured]."""
    def mean(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    return (isinstance(value, list) and len(value) == 4 and isinstance(value[3], str) and mean(value[0])
            and ((value[1] is None and value[2] is None) or (mean(value[1]) and mean(value[2]))))
