"""Suite validation: every mistake is one clear error with file:line and the valid choices."""

import pytest

from bench.errors import BadInput
from bench.plan.suite import load_suite
from tests.conftest import TINY_SUITE


def error_of(write_suite, text: str) -> BadInput:
    path = write_suite(text)
    with pytest.raises(BadInput) as info:
        load_suite(str(path))
    return info.value


def test_valid_suite_loads(write_suite):
    suite = load_suite(str(write_suite(TINY_SUITE)))
    assert suite.name == "tiny"
    assert [m.label for m in suite.methods] == ["full", "lora"]
    assert suite.train["max_steps"] == 20


def test_unknown_method_names_line_and_suggestion(write_suite):
    err = error_of(write_suite, TINY_SUITE.replace("{name: lora,", "{name: lorra,"))
    assert err.where.endswith("suite.yaml:5")
    assert "unknown method 'lorra'" in err.message and "did you mean 'lora'" in err.message
    assert "lora" in err.choices


def test_unknown_top_level_key(write_suite):
    err = error_of(write_suite, TINY_SUITE + "tranin: {lr: 1}\n")
    assert "unknown suite key 'tranin'" in err.message and "did you mean 'train'" in err.message
    assert err.where.endswith(":10")


def test_unknown_training_setting_reports_its_line(write_suite):
    from bench.plan import grid

    suite = load_suite(str(write_suite(TINY_SUITE.replace("max_steps: 20", "max_stepz: 20"))))
    with pytest.raises(BadInput) as info:
        grid.expand(suite)
    assert "unknown training setting 'max_stepz'" in info.value.message
    assert info.value.where.endswith(":9")


def test_wrong_type(write_suite):
    err = error_of(write_suite, TINY_SUITE.replace("seeds: [1]", "seeds: [one]"))
    assert "'seed' must be int" in err.message and err.where.endswith(":8")


def test_malformed_yaml_gives_file_and_line(write_suite):
    err = error_of(write_suite, TINY_SUITE.replace("models: [tiny-encoder]", "models: [tiny-encoder"))
    assert "malformed YAML" in err.message
    assert err.where.rsplit(":", 1)[1].isdigit()


def test_unknown_model_and_task(write_suite):
    err = error_of(write_suite, TINY_SUITE.replace("[tiny-encoder]", "[tiny-encodr]"))
    assert "did you mean 'tiny-encoder'" in err.message and err.where.endswith(":6")
    err = error_of(write_suite, TINY_SUITE.replace("[synth-polarity]", "[synth-polarty]"))
    assert "did you mean 'synth-polarity'" in err.message and err.where.endswith(":7")


def test_duplicate_labels_rejected(write_suite):
    err = error_of(write_suite, TINY_SUITE.replace("{name: full,", "{name: lora,"))
    assert "label 'lora' is used twice" in err.message


def test_exclusion_must_name_suite_members(write_suite):
    err = error_of(write_suite, TINY_SUITE + "exclude:\n  - {model: tiny-t5}\n")
    assert "exclude names model 'tiny-t5'" in err.message and err.where.endswith(":11")


def test_method_override_checked_against_its_settings(write_suite):
    from bench.plan import grid

    text = TINY_SUITE.replace("{name: lora, train", "{name: lora, overrides: {rank: 4}, train")
    with pytest.raises(BadInput) as info:
        grid.expand(load_suite(str(write_suite(text))))
    assert "unknown lora setting 'rank'" in info.value.message and "r" in info.value.choices
    assert info.value.where.endswith(":5")


def test_yaml_1_1_float_strings_accepted(write_suite):
    from bench.plan import grid

    cells = grid.expand(load_suite(str(write_suite(TINY_SUITE.replace("lr: 5.0e-3", "lr: 5e-3")))))
    assert {c.train.lr for c in cells} == {1e-3, 5e-3}


def test_composition_parses(write_suite):
    text = TINY_SUITE.replace("  - {name: full, train: {lr: 1.0e-3}}\n",
                              "  - {compose: [bitfit, lora], label: hybrid}\n")
    suite = load_suite(str(write_suite(text)))
    assert suite.methods[0].name == "compose" and [p.name for p in suite.methods[0].parts] == ["bitfit", "lora"]


def test_shipped_suites_are_valid():
    from bench.plan.suite import suite_names

    names = suite_names()
    assert "smoke" in names
    for name in names:
        load_suite(name)


def test_shipped_suites_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    """Not only from the checkout's root: the suites beside the package (they once were looked for in
    bench/suites, which does not exist, so `--suite smoke` failed anywhere else)."""
    from pathlib import Path

    from bench.plan.suite import suite_names

    monkeypatch.chdir(tmp_path)
    names = suite_names()
    assert {"smoke", "ci", "fewshot"} <= set(names)
    assert names["smoke"] == Path(__file__).resolve().parent.parent / "suites" / "smoke.yaml"


def test_more_mistakes_caught_before_any_work(write_suite):
    from bench.plan import grid

    err = error_of(write_suite, TINY_SUITE.replace("seeds: [1]", "seeds: [1, 1]"))
    assert "seed '1' is listed twice" in err.message and err.where.endswith(":8")
    err = error_of(write_suite, TINY_SUITE + "cell_timeout_s: -5\n")
    assert "'cell_timeout_s' must be positive" in err.message
    for text, message in (
        (TINY_SUITE.replace("max_steps: 20,", "max_steps: 20, keep_best: true,"), "'keep_best' needs 'eval_every'"),
        (TINY_SUITE.replace("{name: lora, train", "{name: lora, overrides: {target_modules: 5}, train"),
         "'target_modules' must be list or str"),
        (TINY_SUITE.replace("{name: full, train: {lr: 1.0e-3}}", "icl"), "icl needs 'shots'"),
    ):
        with pytest.raises(BadInput) as info:
            grid.expand(load_suite(str(write_suite(text))))
        assert message in info.value.message, info.value.message


def test_fewshot_suite_is_t_fews_regime():
    """T-Few's settings (configs/*.json in r-three/t-few): Adafactor as T-Few runs it, 32 shots but 50 for
    ANLI, 20 for HellaSwag and 70 for StoryCloze, length normalisation on every task, T-Few's loss, 1000 steps
    of batch 8 (Compacter++ 500, full fine-tuning 300), bf16 weights, each method's own settings."""
    from bench.plan import grid
    from bench.plan.suite import load_suite

    everything = grid.expand(load_suite("fewshot"), threads=1)
    cells = [c for c in everything if not c.stage]
    trained = [c for c in cells if c.label not in ("zero-shot", "icl")]
    prompted = {"prompt-tuning", "prompt-tuning-tfew"}  # T-Few's prompt tuning: no L_UL, Adafactor unscaled
    assert {c.train.optimizer for c in trained if c.label not in prompted} == {"adafactor-tfew"}
    assert {(c.train.optimizer, c.train.unlikelihood) for c in trained if c.label in prompted} == {
        ("adafactor-tfew-unscaled", False)}
    assert all(c.train.unlikelihood for c in trained if c.label not in prompted)
    assert {c.task.name: c.train.shots for c in cells} == {
        "rte-fewshot": 32, "cb": 32, "copa": 32, "anli-r1": 50, "anli-r2": 50, "anli-r3": 50, "wic": 32, "wsc": 32,
        "winogrande": 32, "hellaswag": 20, "story-cloze": 70}
    assert all(c.task.length_normalize for c in cells)
    assert all(c.train.balanced_batches and c.train.redraw_templates for c in trained)
    assert {(c.train.objective, c.train.batch_size, c.train.weights_dtype) for c in trained} == {("tfew", 8, "bf16")}
    settings = {c.label: (c.train.max_steps, c.train.lr) for c in trained}
    assert settings == {"ia3": (1000, 3e-3), "ia3+pre-training": (1000, 3e-3), "lora": (1000, 3e-3),
                        "prompt-tuning": (1000, 0.3),
                        "prompt-tuning-tfew": (1000, 0.3),
                        "prefix-tuning": (1000, 1e-2), "bitfit": (1000, 3e-4), "compacter-pp": (500, 3e-3),
                        "full": (300, 3e-4)}
    # T-Few's (IA)³ + pre-training: one stage per model (configs/pretrain.json), none of the held-out tasks in it
    stages = [c for c in everything if c.stage]
    assert len(stages) == 2 and {c.model.name for c in stages} == {"t0-3b", "t0"}
    assert len(stages[0].task.members) == 38 and all("p3" in m.source for m in stages[0].task.members)
    assert not {m.name for m in stages[0].task.members} & {c.task.name for c in cells}
    assert (stages[0].train.max_steps, stages[0].train.lr, stages[0].train.objective) == (100_000, 3e-4, "lm")
    assert {c.init_from for c in cells if c.label == "ia3+pre-training"} == {c.id for c in stages}
    lora = next(c for c in trained if c.label == "lora").method_config
    assert (lora["r"], lora["lora_alpha"], lora["target_modules"]) == (4, 1, ["q", "k", "v", "o", "wi_0", "wi_1", "wo"])


def test_a_forgetting_text_is_found_from_the_suite_files_folder(tmp_path, monkeypatch):
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from tests.conftest import TINY_SUITE

    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "mine.txt").write_text("a text of one's own, for the loss before and after training\n")
    (folder / "s.yaml").write_text(TINY_SUITE.replace("max_steps: 20,", "max_steps: 20, forgetting: true, "
                                                                       "forgetting_text: mine.txt,"))
    monkeypatch.chdir(tmp_path)  # not the suite's folder
    cells = grid.expand(load_suite(str(folder / "s.yaml")))
    assert {c.train.forgetting_text for c in cells} == {str((folder / "mine.txt").resolve())}
