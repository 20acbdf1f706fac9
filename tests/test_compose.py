"""A composition's settings (bench/methods/compose.py Composition.resolve): its parts take theirs on their entries of
a suite's `compose:` list, and the composition takes none of its own, so a setting given to it is refused, never
dropped; the `parts` config the grid resolves reaches `estimate` (the dry-run's prices) whole."""

import pytest

from bench.cli import main
from bench.tools.estimate import estimate


@pytest.mark.parametrize("setting", ["nonsense=4", "r=4"])
def test_a_setting_a_composition_does_not_take_is_refused_not_dropped(setting, capsys):
    """Before the fix every `--set` of a composition was dropped (its parts estimated at their defaults)."""
    key = setting.split("=")[0]
    assert main(["estimate", "--model", "tiny-encoder", "--method", "compose(oft+bitfit)", "--set", setting]) == 2
    said = capsys.readouterr().err
    assert f"--set {key}: compose(oft+bitfit) takes no setting '{key}': a composition's settings are its parts'" in said
    assert "compose: [{name: oft, overrides: {...}}, bitfit]" in said and "valid choices: parts" in said
    assert main(["estimate", "--model", "tiny-encoder", "--method", "compose(oft+bitfit)", "--set", "parts=oft"]) == 2
    assert "--set parts: 'parts' of compose(oft+bitfit) must be its parts in order" in capsys.readouterr().err


def test_a_compositions_parts_settings_reach_its_estimate_as_the_dry_run_passes_them(write_suite):
    """A suite sets a part's settings on its `compose:` entry; the grid resolves them into the cell's `parts`, which
    the dry-run gives `estimate` (bench/tools/plan_cost.py): the same config back, each part's count its own."""
    from bench.methods.base import method_settings
    from bench.plan import grid
    from bench.plan.suite import load_suite

    path = write_suite("name: c\nmethods:\n  - {compose: [{name: oft, overrides: {r: 4, oft_block_size: 0}}, bitfit]}"
                       "\nmodels: [tiny-encoder]\ntasks: [synth-polarity]\nseeds: [1]\n"
                       "train: {batch_size: 2, max_steps: 1, max_length: 8}\n")
    (cell,) = grid.expand(load_suite(str(path)))
    composed = estimate("tiny-encoder", cell.method, batch_size=2, seq_len=8,
                        settings=method_settings(cell.method_config))
    assert composed["config"] == cell.method_config
    parts = [estimate("tiny-encoder", "oft", batch_size=2, seq_len=8, settings={"r": 4, "oft_block_size": 0}),
             estimate("tiny-encoder", "bitfit", batch_size=2, seq_len=8)]
    assert composed["params"]["method"] == sum(part["params"]["method"] for part in parts)
    assert composed["params"]["method"] != estimate("tiny-encoder", cell.method, batch_size=2, seq_len=8)[
        "params"]["method"]  # r = 4 blocks, not the default block size 32


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-encoder", "tiny-llama"])
def test_a_later_fisher_parts_choice_not_to_train_an_earlier_parts_tensor_holds(write_suite, model):
    """compose(lora+child-tuning): child-tuning leaves the LoRA matrices its scores give no entry untrained; before
    the fix the union trained them again, whole and unmasked (3,072 more trainable entries than the twin counts on
    either model). The real CPU cell's counts are now the twin's."""
    from bench.cell.recipe import run_cell
    from bench.methods.base import method_settings
    from bench.plan import grid
    from bench.plan.suite import load_suite

    path = write_suite("name: c\nmethods:\n  - {compose: [lora, {name: child-tuning, overrides: {fisher_batches: 2}}]}"
                       f"\nmodels: [{model}]\ntasks: [synth-polarity]\nseeds: [1]\n"
                       "train: {batch_size: 4, max_steps: 1, max_length: 16, max_eval_samples: 8}\n")
    (cell,) = grid.expand(load_suite(str(path)))
    record = run_cell(cell, quiet=True)
    assert record["status"] == "ok", record["error"]
    twin = estimate(model, cell.method, batch_size=4, seq_len=16, settings=method_settings(cell.method_config),
                    step_device="cpu")["params"]
    assert {k: record["params"][k] for k in ("total", "trainable", "method")} == \
        {k: twin[k] for k in ("total", "trainable", "method")}
