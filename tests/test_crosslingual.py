"""Cross-lingual tasks (bench/tasks/crosslingual.py): languages as evaluation splits, the training language,
the transfer average, the data layout per language, and a tiny model trained in one language scored in all."""

import dataclasses
import json
import statistics

import pytest

from bench.cli import main
from bench.errors import BadInput
from bench.tasks import crosslingual
from bench.tasks.data import DataUnavailable, check_split, eval_splits, hub_split, language_view, load_rows
from bench.tasks.registry import builtin_tasks, registry
from bench.tasks.schema import load_task_file
from bench.tasks.synthetic import NEGATIVE, NEUTRAL, POSITIVE, lexicon_map

XNLI_LANGUAGES = ["en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur"]


def four_languages(train: str = "a"):
    task = builtin_tasks()["synth-xpolarity"]
    return dataclasses.replace(task, source={**task.source, "languages": ["en", "a", "b", "c"],
                                             "train_language": train})


def test_transfer_is_the_mean_over_the_target_languages_by_hand():
    task = four_languages("a")  # targets en, b, c; metrics accuracy and f1
    scores = {"accuracy": 90.0, "accuracy_en": 50.0, "accuracy_b": 60.0, "accuracy_c": 76.0,
              "f1": 80.0, "f1_en": 40.0, "f1_b": None, "f1_c": 10.0}
    assert crosslingual.transfer_scores(task, scores) == {"accuracy_transfer": 62.0, "f1_transfer": None}
    assert crosslingual.per_language(task.source, scores, "accuracy") == {"en": 50.0, "a": 90.0, "b": 60.0, "c": 76.0}
    assert crosslingual.transfer_scores(builtin_tasks()["synth-polarity"], scores) == {}


def test_xnli_and_paws_x_read_one_hub_config_per_language():
    tasks = registry()
    xnli = tasks["xnli"]
    assert list(crosslingual.languages(xnli)) == XNLI_LANGUAGES and crosslingual.train_language(xnli) == "en"
    assert list(eval_splits(xnli)) == [""] + XNLI_LANGUAGES[1:]
    assert hub_split(xnli, "eval:sw") == hub_split(xnli, "eval") == "test" and hub_split(xnli, "train") == "train"
    german = tasks["xnli@de"]
    assert crosslingual.train_language(german) == "de"
    assert "de" not in eval_splits(german) and "en" in eval_splits(german)
    assert language_view(german, "train")[0].source["config"] == "de"
    assert language_view(german, "eval")[0].source["config"] == "de"
    swahili, split = language_view(german, "eval:sw")
    assert (swahili.source["config"], split, swahili.labels) == ("sw", "eval", german.labels)
    paws = tasks["paws-x"]
    assert paws.source["dataset"] == "google-research-datasets/paws-x" and len(crosslingual.languages(paws)) == 7
    assert "xnli@de" not in builtin_tasks() and len(crosslingual.variants(builtin_tasks())) == 14 + 6 + 2


def test_data_dir_reads_each_language_s_folder(tmp_path):
    xnli = registry()["xnli@sw"]
    for lang, split in [("sw", "train"), ("sw", "test"), ("de", "test")]:
        folder = tmp_path / "xnli" / lang
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.jsonl").write_text(json.dumps({"premise": f"{lang} {split}", "hypothesis": "h",
                                                           "label": 2}) + "\n")
    assert load_rows(xnli, "train", tmp_path)[0]["premise"] == "sw train"
    assert load_rows(xnli, "eval", tmp_path)[0]["premise"] == "sw test"
    assert load_rows(xnli, "eval:de", tmp_path)[0]["premise"] == "de test"
    with pytest.raises(DataUnavailable, match=r"no test\.\{jsonl,csv,parquet\} in .*xnli/fr"):
        check_split(xnli, "eval:fr", tmp_path)


def test_synthetic_languages_are_the_same_rows_word_by_word():
    task = registry()["synth-xpolarity"]
    en, xa = load_rows(task, "eval"), load_rows(task, "eval:xa")
    words = POSITIVE + NEGATIVE + NEUTRAL
    mapping = lexicon_map("xa")
    assert sorted(mapping.values()) == sorted(words) and mapping != {w: w for w in words}  # a permutation
    assert [r["label"] for r in en] == [r["label"] for r in xa]
    assert all(b["sentence"] == " ".join(mapping[w] for w in a["sentence"].split()) for a, b in zip(en, xa))
    assert load_rows(registry()["synth-xpolarity@xa"], "train")[0]["sentence"] == \
        " ".join(mapping[w] for w in load_rows(task, "train")[0]["sentence"].split())


@pytest.mark.parametrize("source, message", [
    ("{dataset: d/x, languages: [en, de], train_language: fr}", "train_language 'fr' is not one of its languages"),
    ("{dataset: d/x, config: en, languages: [en, de]}", "no 'config' of its own"),
    ("{dataset: d/x, languages: [en]}", "two or more distinct language codes"),
    ("{dataset: d/x, languages: [en, en]}", "two or more distinct language codes"),
    ("{files: {train: a.jsonl}, languages: [en, de]}", "a hub dataset"),
])
def test_a_bad_cross_lingual_source_is_refused_at_its_line(tmp_path, source, message):
    path = tmp_path / "tasks.yaml"
    path.write_text(f"tasks:\n  - name: t\n    type: classification\n    source: {source}\n    text: [s]\n"
                    "    label: label\n    labels: [a, b]\n    metrics: [accuracy]\n")
    with pytest.raises(BadInput, match=message) as info:
        load_task_file(path)
    assert f"{path}:4" in str(info.value.where)


@pytest.mark.slow
def test_trained_in_one_language_scored_in_every_language(write_suite, tmp_path):
    """Full fine-tuning of the tiny encoder on synth-xpolarity in en and in xa: each record holds every language's
    accuracy, the transfer mean is theirs, and each model is far better in its own language than in the others
    (the synthetic languages share no word's meaning)."""
    results = tmp_path / "results"
    suite = write_suite("""\
name: t
methods: [{name: full, train: {lr: 1.0e-3}}]
models: [tiny-encoder]
tasks: [synth-xpolarity, synth-xpolarity@xa]
train: {batch_size: 32, max_steps: 80, max_length: 24, max_eval_samples: 96}
""")
    assert main(["run", "--suite", str(suite), "--results", str(results), "--quiet"]) == 0
    records = {r["cell"]["task"]: r for r in (json.loads(p.read_text()) for p in (results / "t").glob("*.json"))}
    assert all(r["status"] == "ok" for r in records.values())
    for name, train, targets in [("synth-xpolarity", "en", ["xa", "xb"]), ("synth-xpolarity@xa", "xa", ["en", "xb"])]:
        scores = records[name]["scores"]["metrics"]
        assert set(scores) == {f"{m}{s}" for m in ("accuracy", "f1") for s in ["", "_transfer"] +
                               [f"_{lang}" for lang in targets]}
        assert scores["accuracy_transfer"] == pytest.approx(statistics.fmean(scores[f"accuracy_{t}"] for t in targets))
        assert scores["accuracy"] >= 90 and all(scores[f"accuracy_{t}"] <= scores["accuracy"] - 20 for t in targets)


def test_the_cross_lingual_scores_are_documented_as_registered():
    from pathlib import Path

    from bench import figures

    text = (Path(__file__).resolve().parents[1] / "docs" / "measurement.md").read_text()
    for f in figures.CROSSLINGUAL_SCORES:
        assert f"| `{f.key}` | {f.definition} |" in text
        assert figures.figure(f.key).rule == f.rule == "score"


def test_the_crosslingual_xnli_suite_expands_offline():
    from bench.plan import grid
    from bench.plan.suite import load_suite

    cells = grid.expand(load_suite("crosslingual-xnli"))
    stages = [c for c in cells if c.stage]
    assert sorted(c.stage for c in stages) == sorted(f"lang-{lang}" for lang in XNLI_LANGUAGES)
    assert all(c.task.type == "mlm" and c.model.name == "xlm-roberta-base" for c in stages)
    runs = [c for c in cells if not c.stage]
    assert {(c.label, c.task.name) for c in runs} == {(m, t) for m in ("full", "lora", "adapter-pfeiffer")
                                                      for t in ("xnli", "xnli@de", "xnli@sw")} | {("madx", "xnli")}
    ids = {c.stage: c.id for c in stages}
    madx = [c for c in runs if c.label == "madx"]
    assert len(madx) == 3 and all(c.init_from == ids["lang-en"] for c in madx)
    assert all(c.language_stages == {lang: ids[f"lang-{lang}"] for lang in XNLI_LANGUAGES[1:]} for c in madx)


@pytest.mark.slow
def test_the_crosslingual_xnli_suite_prices_in_the_dry_run_offline(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["run", "--suite", "crosslingual-xnli", "--dry-run", "--gpu", "h200"]) == 0
    out = capsys.readouterr().out
    assert "45 cells" in out and "unknown" not in out
    assert "75150 rows" in out  # 15 languages' test splits, 5,010 rows each


def test_the_report_s_transfer_table_and_heatmap_by_hand(tmp_path):
    """Two ok seeds of full trained in en, one in xa, and a failed seed (in no mean): each cell is the mean of the
    ok seeds' per-language scores; a language no ok record scored is a dash, and a NaN in the heatmap. Storage: a
    cell's stored state, plus the language stages' states it reads (params.composed)."""
    import pandas as pd

    from bench.report.crosslingual import transfer_plots, transfer_tables

    def record(train, status, params=None, stages=None, **scores):
        source = {"synthetic": "polarity", "languages": ["en", "xa", "xb"], "train_language": train}
        config = {"task": {"source": source}, **({"language_stages": stages} if stages else {})}
        return {"status": status, "cell": {"config": config}, "params": params or {"stored": 100, "stored_bytes": 500},
                "scores": {"main_metric": "accuracy", "metrics": scores}}

    rows = [("synth-xpolarity", record("en", "ok", accuracy=90.0, accuracy_xa=50.0, accuracy_xb=40.0,
                                       accuracy_transfer=45.0)),
            ("synth-xpolarity", record("en", "ok", accuracy=80.0, accuracy_xa=60.0, accuracy_xb=None,
                                       accuracy_transfer=None)),
            ("synth-xpolarity", record("en", "failed")),
            ("synth-xpolarity@xa", record("xa", "ok", {"stored": 100, "stored_bytes": 500, "composed": 40,
                                                       "composed_bytes": 300}, {"en": "lang-en"}, accuracy=70.0,
                                          accuracy_en=55.0, accuracy_xb=45.0, accuracy_transfer=50.0))]
    rows.append(("synth-polarity", {"status": "ok", "cell": {}, "scores": {"main_metric": "accuracy"}}))  # no config
    frame = pd.DataFrame([{"model": "tiny-encoder", "task": t, "label": "full", "status": r["status"], "record": r}
                          for t, r in rows])
    [table] = transfer_tables(frame)
    assert [c.header for c in table.columns] == ["Method", "Train", "en", "xa", "xb", "Transfer", "Stored params",
                                                 "Stored"]
    assert [[c.text for c in row][:6] for row in table.rows] == [["full", "en", "85.0", "55.0", "40.0", "45.0"],
                                                                ["full", "xa", "55.0", "70.0", "45.0", "50.0"]]
    assert [[c.value for c in row][6:] for row in table.rows] == [[100, 500], [140, 800]]
    # a cell that reads language stages, recorded before their size was: its storage is unknown
    rows[-2][1]["params"].update(composed=None, composed_bytes=None)
    frame["record"] = [r for _, r in rows]
    assert [c.text for c in transfer_tables(frame)[0].rows[1]][6:] == ["–", "–"]
    [plot] = transfer_plots(frame, tmp_path)
    title, tests, trains, grid, text, metric = plot.job.args
    assert (tests, trains, metric) == (["en", "xa", "xb"], ["en", "xa"], "accuracy")
    assert grid == [[85.0, 55.0, 40.0], [55.0, 70.0, 45.0]] and text[0] == ["85.0", "55.0", "40.0"]
