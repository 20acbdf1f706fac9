"""Grid expansion and cell ids."""

import pytest

from bench.errors import BadInput
from bench.plan import cellspec, grid
from bench.plan.suite import load_suite
from tests.conftest import TINY_SUITE

SUITE = TINY_SUITE.replace("models: [tiny-encoder]", "models: [tiny-encoder, tiny-t5]") \
    .replace("tasks: [synth-polarity]", "tasks: [synth-polarity, synth-digits]") \
    .replace("seeds: [1]", "seeds: [1, 2]")


def cells_of(write_suite, text=SUITE, **select):
    return grid.expand(load_suite(str(write_suite(text))), **select)


def test_full_product(write_suite):
    cells = cells_of(write_suite)
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.id for c in cells}) == len(cells)
    assert all(len(c.id) == cellspec.ID_LENGTH for c in cells)


def test_exclusions(write_suite):
    text = SUITE + "exclude:\n  - {model: tiny-encoder, task: [synth-digits]}\n  - {method: lora, seed: 2}\n"
    cells = cells_of(write_suite, text)
    assert not any(c.model.name == "tiny-encoder" and c.task.name == "synth-digits" for c in cells)
    assert not any(c.label == "lora" and c.seed == 2 for c in cells)
    assert len(cells) == 16 - 4 - 3  # 4 encoder×digits cells; 4 lora×seed2 cells, one already excluded


def test_ids_are_stable_and_track_configuration(write_suite):
    first = {c.line() for c in cells_of(write_suite)}
    assert first == {c.line() for c in cells_of(write_suite)}  # same suite, same ids
    relabelled = cells_of(write_suite, SUITE.replace("{name: lora,", "{name: lora, label: low-rank,"))
    assert {c.id for c in relabelled} == {line.split()[0] for line in first}  # a label is cosmetic
    changed = cells_of(write_suite, SUITE.replace("lr: 5.0e-3", "lr: 4.0e-3"))
    lora_before = {line.split()[0] for line in first if "method=lora" in line}
    lora_after = {c.id for c in changed if c.label == "lora"}
    assert lora_before.isdisjoint(lora_after)  # a changed hyperparameter is a new cell
    assert {c.id for c in changed if c.label == "full"} == {line.split()[0] for line in first if "method=full" in line}


def test_id_is_hash_of_resolved_config(write_suite):
    cell = cells_of(write_suite)[0]
    assert cell.id == cellspec.cell_id(cell.config)
    assert cell.config["method"] == {"name": "full", "config": {}}
    lora = next(c for c in cells_of(write_suite) if c.label == "lora" and c.model.name == "tiny-t5")
    assert lora.method_config["target_modules"] == ["q", "v"]  # resolved for T5 explicitly
    assert lora.train.lr == 5e-3 and lora.train.max_steps == 20


def test_training_layers(write_suite):
    text = SUITE.replace("{name: full, train: {lr: 1.0e-3}}", "{name: full, train: {epochs: 2}}")
    full = next(c for c in cells_of(write_suite, text) if c.label == "full")
    assert full.train.epochs == 2 and full.train.max_steps is None  # epochs replaces max_steps
    assert full.train.lr == 2e-5  # the method's recommended rate, as the suite sets none for it


def test_cli_selection(write_suite):
    cells = cells_of(write_suite, only_methods=["lora"], only_models=["tiny-t5"], only_seeds=[7])
    assert {(c.label, c.model.name, c.seed) for c in cells} == {("lora", "tiny-t5", 7)}
    extra = cells_of(write_suite, only_methods=["bitfit"])  # a registry method not in the suite
    assert {c.method for c in extra} == {"bitfit"}


def test_cli_selection_typo(write_suite):
    with pytest.raises(BadInput) as info:
        cells_of(write_suite, only_methods=["lorra"])
    assert info.value.where == "--methods" and "did you mean 'lora'" in info.value.message
    with pytest.raises(BadInput) as info:
        cells_of(write_suite, only_tasks=["synth-digit"])
    assert info.value.where == "--tasks" and "synth-digits" in info.value.message


def test_identical_entries_rejected(write_suite):
    text = SUITE.replace("{name: full, train: {lr: 1.0e-3}}", "{name: lora, label: again, train: {lr: 5.0e-3}}")
    with pytest.raises(BadInput) as info:
        cells_of(write_suite, text)
    assert "resolve to the same configuration" in info.value.message


def test_task_entries_carry_their_own_training_settings(write_suite):
    text = SUITE.replace("tasks: [synth-polarity, synth-digits]",
                         "tasks:\n  - synth-polarity\n  - {name: synth-digits, train: {max_steps: 50, lr: 0.5}}")
    cells = cells_of(write_suite, text)
    digits = {c.label: c.train for c in cells if c.task.name == "synth-digits"}
    polarity = {c.label: c.train for c in cells if c.task.name == "synth-polarity"}
    assert digits["lora"].max_steps == 50 and polarity["lora"].max_steps == 20
    assert digits["lora"].lr == 5e-3  # the method entry's lr is more specific than the task's
    assert digits["full"].lr == 1e-3


@pytest.mark.parametrize("setting, before_value, other",
                         [("weights_dtype", "auto", "bf16"), ("attention", "auto", "eager")])
def test_a_later_setting_enters_the_id_only_when_set(write_suite, setting, before_value, other):
    """Settings that came after cells were first recorded: at the value that behaves as before they are
    left out of the id, so recorded cells keep theirs; set otherwise, they make a new cell."""
    before = cells_of(write_suite)
    assert setting not in before[0].config["train"]
    same = cells_of(write_suite, SUITE.replace("train: {batch_size", f"train: {{{setting}: {before_value}, batch_size"))
    assert [c.id for c in same] == [c.id for c in before]
    changed = cells_of(write_suite, SUITE.replace("train: {batch_size", f"train: {{{setting}: {other}, batch_size"))
    assert changed[0].config["train"][setting] == other
    assert {c.id for c in changed}.isdisjoint(c.id for c in before)


def test_a_method_revision_renames_the_cells_it_changed_and_only_those(write_suite, monkeypatch):
    """A fix that changes what a method computes on some architectures puts its revision into their cells'
    configs, so their records from before the fix are not reused; the method's other cells keep their ids."""
    import dataclasses

    from bench import methods

    text = "name: r\nmethods: [prompt-tuning, lora]\nmodels: [tiny-encoder, tiny-gpt2]\ntasks: [synth-intensity]\n"
    fixed = {(c.method, c.model.name): c for c in cells_of(write_suite, text)}
    assert methods.get("prompt-tuning").revisions.get("gpt2", 1) > 1
    monkeypatch.setitem(methods.REGISTRY, "prompt-tuning",
                        dataclasses.replace(methods.get("prompt-tuning"), revisions={}))
    before = {(c.method, c.model.name): c for c in cells_of(write_suite, text)}
    assert fixed[("prompt-tuning", "tiny-gpt2")].config["method"]["config"]["revision"] == 2
    assert "revision" not in before[("prompt-tuning", "tiny-gpt2")].config["method"]["config"]
    changed = {key for key in fixed if fixed[key].id != before[key].id}
    assert changed == {("prompt-tuning", "tiny-gpt2")}


def test_balanced_batches_need_classes(write_suite):
    text = TINY_SUITE.replace("train: {batch_size", "train: {balanced_batches: true, batch_size")
    assert all(c.train.balanced_batches for c in cells_of(write_suite, text))  # synth-polarity has classes
    with pytest.raises(BadInput, match=r"suite.yaml:\d+: 'balanced_batches' .* task 'synth-digits' is generation"):
        cells_of(write_suite, text.replace("tasks: [synth-polarity]", "tasks: [synth-polarity, synth-digits]"))
