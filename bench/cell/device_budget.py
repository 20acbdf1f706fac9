"""A packed cell's hold on its GPU: its CUDA caching allocator may reserve at most its budget (bench/run/packing.py).

Called in the cell's own process before the cell allocates anything: `torch.cuda.set_per_process_memory_fraction`
limits what this process's allocator reserves from the device (cached blocks included), so a cell that outgrows its
prediction gets torch's out-of-memory error, recorded `oom` and retried alone by the executor, while the cells
beside it keep their memory. The CUDA context lies outside the allocator and outside this limit
(packing.CONTEXT_BYTES counts it).
"""

from __future__ import annotations

import torch


def hold_to_budget(budget: int) -> float | None:
    """Hold this process's allocator on its device (device 0: the cell sees only its own) to `budget` bytes; the
    fraction of the device set, None on a machine without CUDA (nothing to hold)."""
    if budget <= 0:
        raise ValueError(f"a device budget must be positive, got {budget}")
    if not torch.cuda.is_available():
        return None
    fraction = min(1.0, budget / torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    return fraction
