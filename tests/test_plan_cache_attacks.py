"""The plan cache (bench/tasks/cache.py's `plan` entries: step prices, prompt lengths, memory predictions that pack
cells onto GPUs) under attack: damaged entries, entries of another harness, a folder that is a link or read-only, a
full disk. Whatever the cache holds, a plan is computed again or unknown, never a crash, never a wrong number."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from bench.plan import grid
from bench.plan.suite import load_suite
from bench.tasks import cache
from bench.tools import plan_cost, plan_entries


@pytest.fixture
def cell(tmp_path, monkeypatch):
    """A LoRA cell of the tiny encoder, with a cache of its own."""
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "plan.yaml"
    path.write_text("name: plan\nmethods: [lora]\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\nseeds: [1]\n"
                    "train: {batch_size: 8, max_steps: 2, max_length: 16}\n")
    (only,) = grid.expand(load_suite(str(path)), threads=1)
    return only


def entry_of(value_is) -> Path:
    """The one plan entry whose stored value passes `value_is`."""
    (path,) = [p for p in cache.entries("plan") if value_is(json.loads(p.read_text()))]
    return path


def memory_entry(cell) -> tuple[dict, Path]:
    """The cell's memory prediction, computed, and the entry it was stored in."""
    assert not cache.entries("plan")
    predicted = plan_cost.predicted_memory(cell)
    return predicted, entry_of(lambda v: isinstance(v, dict))


@pytest.mark.parametrize("damage", [
    '{"predicted_peak_bytes": NaN}', '{"predicted_peak_bytes": -5}', '{"predicted_peak_bytes": Infinity}',
    '{"predicted_peak_bytes": "9"}', '{"predicted_peak_bytes": true}',
    '{"predicted_peak_bytes": 9, "not_modelled": "x"}', '{"predicted_peak_bytes": 9, "not_modelled": [1]}',
    '{"predicted_peak_bytes": 9, "eval_unknown": 5}',
    '{"weights_bytes": -1, "predicted_peak_bytes": 9}', '[1, 2]', '"x"', '{"weights_bytes": 5', '',
    "[" * 100_000 + "]" * 100_000, '{"predicted_peak_bytes": 1' + "0" * 5000 + "}", b"\xff\xfe".decode("latin-1")],
    ids=lambda damage: damage[:40])
def test_a_damaged_memory_prediction_is_predicted_again(cell, damage):
    """Before the fix, a dict entry was used whatever it held (a NaN or negative peak went on to the packer and to
    Slurm's memory request), another JSON type made the prediction unknown, and JSON nested past Python's recursion
    limit, or an integer past its digit limit, crashed the run: now each is predicted again and stored over the
    damaged entry."""
    predicted, path = memory_entry(cell)
    assert plan_entries.count(predicted["predicted_peak_bytes"], positive=True)
    path.write_text(damage)
    assert plan_cost.predicted_memory(cell) == predicted
    assert json.loads(path.read_text()) == predicted


@pytest.mark.parametrize("damage", ['["a", "b", 0, ""]', '[NaN, NaN, 0, ""]', '[-1, -2, 0, ""]', '[1.5, 2, 0, ""]',
                                    '[1, 2, ""]', '[1, 2, 3, 4]', '[1, 2, -3, ""]', '{"train_step": 1}'])
def test_a_damaged_step_price_is_priced_again(cell, damage):
    """Before the fix, a 3-item list was taken as the price: strings crashed the dry-run (TypeError), NaN crashed it
    (ValueError), a negative or fractional price was printed and summed."""
    first = plan_cost.cell_flops(cell, {})
    path = entry_of(lambda v: isinstance(v, list))
    path.write_text(damage)
    assert plan_cost.cell_flops(cell, {}) == first and first[0] > 0
    assert plan_entries.step_price(json.loads(path.read_text()))


def test_each_plan_entry_check_takes_what_its_writer_stores_and_nothing_else():
    assert plan_entries.step_price([36378624, 2367744, 0, ""])
    assert plan_entries.step_price([None, None, None, "unknown: x"])
    assert plan_entries.memory(None) and plan_entries.memory({"weights_bytes": 5, "predicted_peak_bytes": None})
    assert plan_entries.memory({"weights_bytes": 5, "predicted_peak_bytes": 7, "shards": 2})
    assert plan_entries.memory({"predicted_peak_bytes": 7, "selection_peak_bytes": 6, "upper_bound": ["x"]})
    assert not plan_entries.memory({"predicted_peak_bytes": 7, "upper_bound": "x"})
    assert not plan_entries.memory({"predicted_peak_bytes": 7, "upper_bound": [1]})
    assert not plan_entries.memory({"weights_bytes": 5, "predicted_peak_bytes": 7, "shards": 0})
    assert not plan_entries.memory({"weights_bytes": 5, "predicted_peak_bytes": 0})
    assert not plan_entries.memory({"weights_bytes": 5})  # no prediction stored: not the estimate's section
    assert plan_entries.example_tokens([12.5, None, None, "measured"])
    assert plan_entries.example_tokens([12, 10.5, 3, "measured"])
    for bad in ([float("nan"), None, None, "x"], [float("inf"), None, None, "x"], [-3.0, None, None, "x"],
                [0, None, None, "x"], [True, None, None, "x"], ["12", None, None, "x"], [12.5, None, None],
                [12.5, "x"], [12, 10.5, None, "x"], [12, 10.5, float("nan"), "x"], [12, 0, 3, "x"]):
        assert not plan_entries.example_tokens(bad), bad


def test_an_entry_of_another_harness_source_is_not_read(cell, monkeypatch):
    """The key holds a digest of this harness's source: an entry another version wrote (here: a peak of 7 bytes) is
    under another name, so it is never read, whatever it says."""
    predicted, path = memory_entry(cell)
    path.write_text('{"predicted_peak_bytes": 7}')
    monkeypatch.setattr(cache, "source_digest", lambda: "another-version")
    assert plan_cost.predicted_memory(cell) == predicted
    assert json.loads(path.read_text()) == {"predicted_peak_bytes": 7} and len(cache.entries("plan")) == 2


def test_a_read_only_cache_with_a_damaged_entry_still_predicts(cell, monkeypatch):
    """Before the fix, the damaged entry's removal raised (read-only file system) out of the dry-run and the run."""
    predicted, path = memory_entry(cell)
    path.write_text('{"predicted_peak_bytes": NaN}')

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setattr(os, "replace", read_only)
    assert plan_cost.predicted_memory(cell) == predicted
    assert path.read_text() == '{"predicted_peak_bytes": NaN}'  # left as it was, and never used


def test_a_full_disk_while_storing_leaves_no_entry_and_no_temporary_file(cell, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    predicted = plan_cost.predicted_memory(cell)
    assert plan_entries.count(predicted["predicted_peak_bytes"], positive=True)
    assert list(cache.root("plan").iterdir()) == []  # no entry, and atomic_write removed its temporary file


def test_a_plan_folder_that_is_a_link_is_neither_read_nor_written_nor_cleared(cell, tmp_path):
    """A `plan` folder replaced by a link out of the cache (on a shared machine, anyone who can write the cache can
    plant one): before the fix the cache read its entries (here a 7-byte peak under the cell's own key), wrote new
    ones there and `cache clear` removed files there. Now the folder is not used: predicted afresh each time."""
    predicted, path = memory_entry(cell)
    outside = tmp_path / "outside"
    cache.root("plan").rename(outside)
    cache.root("plan").symlink_to(outside)
    planted = outside / path.name
    planted.write_text('{"predicted_peak_bytes": 7}')
    before = sorted(p.name for p in outside.iterdir())
    assert plan_cost.predicted_memory(cell) == predicted
    assert plan_cost.cell_flops(cell, {})[0] > 0
    assert cache.entries("plan") == [] and cache.clear() == (0, 0)
    assert sorted(p.name for p in outside.iterdir()) == before and planted.read_text() == '{"predicted_peak_bytes": 7}'


def test_an_empty_cache_variable_is_the_default_folder_not_the_current_one(cell, tmp_path, monkeypatch):
    """PEFT_BENCH_CACHE='' (an export left empty): before the fix the cache was `./plan` and `./features`, written
    into whatever folder the command ran in (a repository, a results folder); now it is the default folder."""
    monkeypatch.setenv("PEFT_BENCH_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cache.root("plan") == tmp_path / "home" / ".cache" / "peft-bench" / "plan"
    plan_cost.predicted_memory(cell)
    assert list(work.iterdir()) == [] and len(cache.entries("plan")) == 1
