"""The Fisher methods' choice of trained entries (bench/methods/fisher.py: top_share_masks): exactly torch.topk's
entries without ties, exactly k with them, and no memory beyond what selection_bytes prices: to the byte by LiveBytes,
and by the process's resident memory, which sees what happens inside an operator too (a flat topk's ~16 hidden bytes
an entry on CPU, which the harness's "upper bound" missed before)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bench.cell.probe import LiveBytes
from bench.methods import fisher


def topk_masks(scores: list[torch.Tensor], share: float) -> list[torch.Tensor]:
    """The masks of a flat torch.topk over every score (the selection before the fix), for comparison."""
    flat = torch.cat([s.flatten() for s in scores])
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, fisher.kept_entries(share, flat.numel())).indices] = True
    return [m.view_as(s) for m, s in zip(torch.split(chosen, [s.numel() for s in scores]), scores)]


@pytest.mark.parametrize("chunk", [5, fisher.SELECTION_CHUNK])  # 5: counts, ties and prefixes across chunks
def test_without_ties_the_masks_are_topks(monkeypatch, chunk):
    monkeypatch.setattr(fisher, "SELECTION_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        shapes = [tuple(int(n) for n in torch.randint(1, 12, (2,), generator=generator)) for _ in range(3)]
        scores = [torch.rand(shape, generator=generator) ** 4 for shape in shapes]  # many decades, as squares are
        assert len(torch.cat([s.flatten() for s in scores]).unique()) == sum(s.numel() for s in scores)
        share = float(torch.rand(1, generator=generator))
        masks = fisher.top_share_masks(scores, share)
        assert [m.shape for m in masks] == [s.shape for s in scores] and all(m.dtype == torch.bool for m in masks)
        assert all(torch.equal(m, t) for m, t in zip(masks, topk_masks(scores, share))), trial


@pytest.mark.parametrize("chunk", [3, fisher.SELECTION_CHUNK])
def test_with_ties_exactly_k_are_kept_the_first_tied_ones_in_order(monkeypatch, chunk):
    """Scores 0, 1, 2 over three tensors (zeros too: a tensor the batches never reach scores 0): every entry above
    the k-th largest, then the tied ones in tensor order, then flat index order, until exactly k."""
    monkeypatch.setattr(fisher, "SELECTION_CHUNK", chunk)
    scores = [torch.tensor([[2.0, 1.0, 1.0], [0.0, 1.0, 2.0]]), torch.tensor([1.0, 1.0, 0.0, 2.0]),
              torch.zeros(3, 2)]  # 16 entries: three 2s, five 1s, eight 0s
    flat = torch.cat([s.flatten() for s in scores])
    for share in (0.01, 3 / 16, 5 / 16, 7 / 16, 0.5, 10 / 16, 1.0):
        keep = fisher.kept_entries(share, flat.numel())
        chosen = torch.cat([m.flatten() for m in fisher.top_share_masks(scores, share)])
        assert int(chosen.sum()) == keep
        threshold = flat.sort(descending=True).values[keep - 1]
        expected = flat > threshold
        tied = (flat == threshold).nonzero().squeeze(1)[: keep - int(expected.sum())]
        expected[tied] = True
        assert torch.equal(chosen, expected), share
        assert torch.equal(chosen, torch.cat([m.flatten() for m in fisher.top_share_masks(scores, share)]))


def scores_of(sizes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(n, generator=generator) for n in sizes]


def test_the_selection_holds_what_selection_bytes_says_to_the_byte():
    """LiveBytes sees the operators' outputs: the masks, one chunk's comparison and a count; the count's int64 cast
    happens inside `sum`, unseen here (the next test sees it)."""
    sizes = (3 * fisher.SELECTION_CHUNK // 2, 700_000, 1_000)  # the largest tensor spans two chunks
    scores = scores_of(sizes)
    eligible, largest = sum(sizes), max(sizes)
    with LiveBytes() as live:
        fisher.top_share_masks(scores, 0.3)
    cast = 8 * min(fisher.SELECTION_CHUNK, largest)
    assert live.peak == fisher.selection_bytes(eligible, largest) - 4 * eligible - cast
    small = (900, 300)  # tensors below a chunk: the largest tensor's comparison
    scores = scores_of(small)
    with LiveBytes() as live:
        fisher.top_share_masks(scores, 0.3)
    assert live.peak == fisher.selection_bytes(sum(small), 900) - 4 * sum(small) - 8 * 900


RESIDENT = """
import json, re, sys, torch
from bench.methods import fisher
from tests.test_fisher_selection import scores_of, topk_masks
def high_water():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
sizes = tuple(json.loads(sys.argv[1]))
scores = scores_of(sizes)
rises = {}
for name, select in (("top_share_masks", fisher.top_share_masks), ("topk", topk_masks)):
    select(scores_of((10,)), 0.3)  # torch's first-call setup, outside the measured call
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark, reset to what is resident now
    before = high_water()
    masks = select(scores, 0.3)
    rises[name] = high_water() - before
    del masks
print(json.dumps(rises))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resident high-water mark")
def test_the_processs_resident_memory_rises_by_what_selection_bytes_says():
    """In a process whose allocations of 64 KiB or more are each mapped and unmapped on their own (glibc's
    MALLOC_MMAP_THRESHOLD_), the resident high-water mark follows the bytes allocated, hidden buffers included, to
    within pages: the selection's rise is selection_bytes less the scores, within 1 MiB of 16 MiB; a flat topk's
    (the selection before the fix) is over 15 bytes an entry above what it priced (concatenation, masks, outputs)."""
    sizes = (3_000_000, 2_500_000, 1_000_000)
    eligible, largest = sum(sizes), max(sizes)
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RESIDENT, json.dumps(sizes)], capture_output=True, text=True,
                          env=environment, cwd=os.path.dirname(os.path.dirname(__file__)), check=True, timeout=300)
    rises = json.loads(done.stdout.strip().splitlines()[-1])
    priced = fisher.selection_bytes(eligible, largest) - 4 * eligible
    assert abs(rises["top_share_masks"] - priced) < 2**20, (rises, priced)
    keep = fisher.kept_entries(0.3, eligible)
    old_priced = (4 + 1) * eligible + 12 * keep  # what the old twin priced beside the scores: cat, chosen, outputs
    assert rises["topk"] - old_priced > 15 * eligible  # topk's own buffer, ~16 bytes an entry
