"""The results store: round trip, atomic writes, history, unreadable records, locks."""

import json
import os

import pytest

from bench import record as rec
from bench.files import atomic_write
from bench.plan import grid
from bench.plan.suite import load_suite
from bench.run.store import Store, load_frame
from tests.conftest import TINY_SUITE


@pytest.fixture
def cell(write_suite):
    return grid.expand(load_suite(str(write_suite(TINY_SUITE))))[0]


def ok_record(cell, accuracy=91.0):
    r = rec.new_record(cell)
    r["params"].update(total=100, trainable=10, trainable_pct=10.0)
    r["scores"]["metrics"] = {"accuracy": accuracy}
    return rec.finish(r, "ok")


def test_record_round_trip(tmp_path, cell):
    store = Store(tmp_path)
    r = ok_record(cell)
    path = store.write(r)
    assert path == tmp_path / "tiny" / f"{cell.id}.json"
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the others sharing the store
    assert store.read("tiny", cell.id) == json.loads(json.dumps(r))
    assert r["schema_version"] == rec.SCHEMA_VERSION and rec.problems(r) == []
    for section in ("memory", "time", "params"):
        assert all(v is None or isinstance(v, (int, float, str)) for v in r[section].values())


def test_non_finite_figures_become_null(cell):
    r = rec.new_record(cell)
    r["train"] = {"losses": [0.5, float("nan")], "final_loss": float("inf")}
    r["time"]["train_s"] = float("nan")
    rec.finish(r, "ok")
    assert r["train"] == {"losses": [0.5, None], "final_loss": None} and r["time"]["train_s"] is None


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_overwrite_keeps_history(tmp_path, cell):
    store = Store(tmp_path)
    first = ok_record(cell, 80.0)
    store.write(first)
    second = ok_record(cell, 90.0)
    second["created_at"] = "2099-01-01T00:00:00+00:00"
    store.write(second)
    assert store.read("tiny", cell.id)["scores"]["metrics"]["accuracy"] == 90.0
    history = list((tmp_path / "tiny" / "history").glob("*.json"))
    assert len(history) == 1 and json.loads(history[0].read_text())["scores"]["metrics"]["accuracy"] == 80.0
    frame, bad = load_frame(tmp_path, "tiny")
    assert len(frame) == 1 and not bad  # history is not read as current records


def test_loader_reports_unreadable_records(tmp_path, cell):
    store = Store(tmp_path)
    store.write(ok_record(cell))
    (tmp_path / "tiny" / "broken.json").write_text("{not json")
    (tmp_path / "tiny" / "old.json").write_text(json.dumps({"schema_version": 0}))
    frame, bad = load_frame(tmp_path, "tiny")
    assert len(frame) == 1
    assert frame.loc[0, "score"] == 91.0 and frame.loc[0, "params.trainable"] == 10
    assert len(bad) == 2 and any("unreadable" in b for b in bad) and any("schema_version" in b for b in bad)
    assert store.read("tiny", "broken") is None


def test_claim_is_exclusive_and_recovers_stale_locks(tmp_path, cell):
    store = Store(tmp_path)
    first = store.acquire("tiny", cell.id)
    assert first is not None and store.acquire("tiny", cell.id) is None
    first.release()
    lock = tmp_path / "tiny" / f"{cell.id}.lock"
    assert not lock.exists()
    import socket

    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 12345}))  # no such process
    mine = store.acquire("tiny", cell.id)
    assert mine is not None
    mine.release()


def test_planning_from_one_scan_looks_again_at_what_it_would_run(tmp_path, cell):
    """run reads the suite's records once (Store.scan) to plan; a cell that scan says must run is read again,
    so a record written since (another runner, an adopted spool) is not trained twice."""
    from bench.run.runner import plan

    store = Store(tmp_path)
    assert plan([cell], store, recorded={}) == ([cell], [])
    failed = rec.finish(rec.new_record(cell), "failed", {"type": "E", "message": "x", "where": None, "traceback": None})
    store.write(failed)
    recorded, bad = store.scan("tiny")
    assert list(recorded) == [cell.id] and bad == []
    assert plan([cell], store, recorded=recorded) == ([], [cell])  # failed: kept unless --retry-failed
    store.write(ok_record(cell))  # another runner finished it after the scan
    assert plan([cell], store, retry_failed=True, recorded=recorded) == ([], [cell])
    assert plan([cell], Store(tmp_path / "empty"), recorded={cell.id: ok_record(cell)}) == ([], [cell])


def test_scan_reads_each_record_once_and_trusts_only_an_unchanged_file(tmp_path, cell, monkeypatch):
    """The suite's index (.index) keeps what planning needs of each record under the file's stat: a second
    scan reads no record; a replaced, corrupt or new file is read again; the index itself is never a record."""
    import bench.run.store as store_module

    store = Store(tmp_path)
    failed = rec.finish(rec.new_record(cell), "failed", {"type": "E", "message": "x", "where": None,
                                                         "traceback": None, "environment": True})
    store.write(failed)
    (tmp_path / "tiny" / "broken.json").write_text("{not json")
    first = store.scan("tiny")
    assert first[0] == {cell.id: {"status": "failed", "error": {"environment": True}}}
    assert len(first[1]) == 1 and first[1][0].startswith(f"{tmp_path / 'tiny' / 'broken.json'}: unreadable")

    reads, load = [], store_module._load
    monkeypatch.setattr(store_module, "_load", lambda path, checked: reads.append((path.name, checked)) or load(path, checked))
    assert store.scan("tiny") == first and reads == []  # nothing read again, the same answer

    store.write(ok_record(cell))  # replaced (another inode): read again
    assert store.scan("tiny")[0] == {cell.id: {"status": "ok", "error": None}}
    assert reads == [(f"{cell.id}.json", False)]

    (tmp_path / "tiny" / ".index").write_text("garbage")  # a corrupt index is rebuilt from the records
    reads.clear()
    assert store.scan("tiny")[0][cell.id]["status"] == "ok"
    assert set(reads) == {("broken.json", False), (f"{cell.id}.json", False)}

    index = json.loads((tmp_path / "tiny" / ".index").read_text())
    forged = json.loads(json.dumps(index))  # parseable, right stat, but no plan view: not trusted
    forged["files"][f"{cell.id}.json"][3] = {"stat": "ok"}
    (tmp_path / "tiny" / ".index").write_text(json.dumps(forged))
    reads.clear()
    assert store.scan("tiny")[0][cell.id] == {"status": "ok", "error": None} and reads == [(f"{cell.id}.json", False)]

    index["checker"] = "another version of the record check"
    (tmp_path / "tiny" / ".index").write_text(json.dumps(index))
    reads.clear()
    store.scan("tiny")
    assert set(reads) == {("broken.json", False), (f"{cell.id}.json", False)}

    reads.clear()  # the records themselves: the usable one read unchecked (the index vouches), the broken one not at all
    index_before = (tmp_path / "tiny" / ".index").read_bytes()
    records, bad = store.records("tiny")
    assert [r["cell"]["id"] for r in records] == [cell.id] and reads == [(f"{cell.id}.json", True)]
    assert len(bad) == 1 and "broken.json: unreadable" in bad[0]  # never the index itself

    store.write(ok_record(cell, accuracy=50.0))  # reading records (report, compare, merge) never writes the store
    assert store.records("tiny")[0][0]["scores"]["metrics"]["accuracy"] == 50.0
    assert (tmp_path / "tiny" / ".index").read_bytes() == index_before


def test_scan_of_a_store_it_cannot_write_still_answers(tmp_path, cell, monkeypatch):
    import bench.run.store as store_module

    store = Store(tmp_path)
    store.write(ok_record(cell))

    def refuse(path, data):
        raise PermissionError(13, "read-only store", str(path))

    monkeypatch.setattr(store_module, "atomic_write", refuse)
    assert store.scan("tiny")[0] == {cell.id: {"status": "ok", "error": None}}
    assert not (tmp_path / "tiny" / ".index").exists()
