"""Counting tensors: each tensor once (views, tied and shared weights once), its bytes, the weights it holds,
and a model's parameter counts. Used by methods (what they add), the cell (params figures) and `estimate`."""

from __future__ import annotations

import torch


def storage_key(t: torch.Tensor) -> int:
    """Identity of the storage under a tensor (views share it). Unlike data_ptr this also tells
    meta and fake tensors apart, which all report address 0."""
    return t.untyped_storage()._cdata


def tensor_key(t: torch.Tensor):
    """Identity of a tensor's memory: same storage, offset and shape means the same tensor."""
    return storage_key(t), t.storage_offset(), tuple(t.shape)


def unique_tensors(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        k = tensor_key(t)
        if k not in seen:
            seen.add(k)
            out.append(t)
    return out


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct tensors among `tensors`, each in its own dtype."""
    return sum(t.nbytes for t in unique_tensors(tensors))


def safetensors_size(state: dict[str, torch.Tensor], gather=None) -> tuple[int, int]:
    """Parameter elements and bytes of `state` written as one safetensors file (header included), each tensor once
    (safetensors refuses shared ones; tied weights are stored once), each `gather`ed first where given (a sharded
    cell's: whole). Index tensors (sparse updates) are saved, so they count in bytes, but they are not parameters.
    Nothing to write (zero-shot): 0 and 0, no file, not an empty file's header."""
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, t in state.items():
        if tensor_key(t) not in seen:
            seen.add(tensor_key(t))
            tensors[name] = (gather(t.detach()) if gather else t.detach()).to("cpu").contiguous()
    if not tensors:
        return 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter.safetensors"
        save_file(tensors, str(path))
        return sum(t.numel() for t in tensors.values() if t.is_floating_point()), path.stat().st_size


def elements(p: torch.Tensor) -> int:
    """The weights a parameter holds. A bitsandbytes 4-bit weight stores two in each byte of a flat tensor; its
    quantisation state keeps the shape of the weight it stands for."""
    state = getattr(p, "quant_state", None)
    return state.shape.numel() if state is not None else p.numel()


def count_params(model: torch.nn.Module, grad_masks=(), selected: int | None = None) -> dict:
    """params.total, trainable and trainable_pct, each tensor once (4-bit weights by the weights they hold); a
    tensor with a gradient mask ((parameter, bool mask) pairs: FishMask, Child-Tuning) counts only the entries
    that train: the masks' True entries, or `selected` of them where given (a meta-device mask has no values)."""
    params = unique_tensors(model.parameters())
    masked = {id(p) for p, _ in grad_masks}
    total = sum(elements(p) for p in params)
    trainable = (sum(elements(p) for p in params if p.requires_grad and id(p) not in masked)
                 + (selected if selected is not None else sum(int(mask.sum()) for _, mask in grad_masks)))
    return {"total": total, "trainable": trainable,
            "trainable_pct": 100.0 * trainable / total if total else None}


def with_values(make, like: torch.Tensor) -> torch.Tensor:
    """The tensor `make(device)` builds on `like`'s device. Where `like` is a fake tensor (`estimate`'s and the
    dry-run's fake pass, bench/tools/estimate.py) it is built for real and handed over as a fake that keeps its
    values (the fake mode's constant): code that reads them (`.item()`, as peft's Poly router checks its task ids)
    then runs on the fake pass as on real tensors, where a plain fake, whose values are unknown, would stop it."""
    from torch._subclasses.fake_tensor import FakeTensor

    if not isinstance(like, FakeTensor):
        return make(like.device)
    return constant_fake(like.fake_mode, lambda: make(like.device))  # the device the fakes claim (the CPU)


def constant_fake(fake_mode, make) -> torch.Tensor:
    """`make()` run for real, outside `fake_mode`, and handed over as a fake of that mode that keeps its values (the
    mode's constant), so code that reads them runs on the fake pass as on real tensors (with_values; a fake pass's
    random draw of one number, bench/cell/probe._ScalarDraws)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        values = make()
    return fake_mode.fake_tensor_converter.from_real_tensor(fake_mode, values, make_constant=True)
