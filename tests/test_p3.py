"""T0's training mixture from bigscience/P3 (bench/tasks/p3.py), read offline from the hub's layout."""

import json

import pytest

from bench.tasks import p3
from bench.tasks.data import DataUnavailable, check_available, load_rows
from bench.tasks.registry import builtin_tasks


def write_p3(root, subsets: dict[str, int]) -> None:
    for name, n in subsets.items():
        folder = root / "P3" / name
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text("".join(json.dumps(
            {"inputs_pretokenized": f"{name} input {i}", "targets_pretokenized": f"target {i}", "inputs": [1, 2]})
            + "\n" for i in range(n)))


def test_a_dataset_is_every_template_of_it_each_capped_as_t0_caps_it(tmp_path, monkeypatch):
    write_p3(tmp_path, {"glue_mrpc_paraphrase": 5, "glue_mrpc_equivalent": 3, "glue_mrpc_equivalent_score_eval": 4,
                        "glue_qqp_duplicate": 2})
    monkeypatch.setattr(p3, "MAX_EXAMPLES_PER_DATASET", 8)  # 8 // 2 templates = 4 rows each at most
    rows = load_rows(builtin_tasks()["p3-glue-mrpc"], "train", tmp_path)
    by_template = {}
    for row in rows:
        by_template.setdefault(row["template"], []).append(row)
    assert {t: len(r) for t, r in by_template.items()} == {"glue_mrpc_equivalent": 3, "glue_mrpc_paraphrase": 4}
    assert set(rows[0]) == {"inputs_pretokenized", "targets_pretokenized", "template"}  # token ids left behind


def test_the_registry_holds_t0s_38_training_datasets_and_none_of_t_fews_held_out_tasks():
    tasks = {name: t for name, t in builtin_tasks().items() if "p3" in t.source}
    assert len(tasks) == 38
    held_out = ("rte", "cb", "copa", "anli", "wic", "wsc", "winogrande", "hellaswag", "story")
    assert not [name for name in tasks if any(h in name for h in held_out)]
    assert all(t.type == "generation" and t.target == "targets_pretokenized" for t in tasks.values())


def test_missing_p3_data_is_one_clear_error_before_work(tmp_path):
    with pytest.raises(DataUnavailable, match="no bigscience/P3 subset starting with 'glue_mrpc_'"):
        check_available(builtin_tasks()["p3-glue-mrpc"], tmp_path, evaluation_only=False)
