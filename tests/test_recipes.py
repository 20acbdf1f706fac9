"""The papers' recipes as suites: each expands offline to the paper's cells under the authors' settings, and every
cell is priced offline."""

import math

import pytest

from bench.plan.grid import expand
from bench.plan.suite import load_suite

# A second transcription of microsoft/LoRA examples/NLU/roberta_large_<task>.sh (read again for this test):
# --num_train_epochs, --learning_rate, --per_device_train_batch_size, --max_seq_length.
ROBERTA_LARGE_SCRIPTS = {
    "mnli": (10, 3e-4, 4, 128), "sst2": (10, 4e-4, 8, 512), "mrpc": (20, 3e-4, 4, 512), "cola": (20, 3e-4, 4, 128),
    "qnli": (10, 2e-4, 4, 512), "qqp": (20, 3e-4, 4, 512), "rte": (20, 4e-4, 8, 512), "stsb": (10, 3e-4, 4, 128),
}


def test_the_roberta_large_recipe_is_the_authors_scripts():
    """40 cells (8 tasks × 5 seeds) of LoRA r=8, alpha=16 on roberta-large's query and value projections, each task
    at its script's epochs, learning rate, batch size and max length, with the scripts' warmup and weight decay."""
    cells = expand(load_suite("lora-paper-glue-large"))
    assert len(cells) == 40 and {c.model.name for c in cells} == {"roberta-large"}
    assert {c.seed for c in cells} == {1, 2, 3, 4, 5}
    for cell in cells:
        epochs, lr, batch, length = ROBERTA_LARGE_SCRIPTS[cell.task.name]
        t = cell.train
        assert (t.epochs, t.lr, t.batch_size, t.max_length) == (epochs, lr, batch, length), cell.task.name
        assert (t.warmup_ratio, t.weight_decay) == (0.06, 0.1)
        assert cell.method == "lora" and cell.method_config["r"] == 8 and cell.method_config["lora_alpha"] == 16
        assert sorted(cell.method_config["target_modules"]) == ["query", "value"]


@pytest.mark.parametrize("suite", ["lora-paper-glue", "lora-paper-glue-large"])
def test_the_lora_paper_suites_are_priced_offline(suite, capsys, monkeypatch):
    """Every cell priced without the hub (the training splits' sizes stated in the task definitions): RTE's
    ceil(epochs × 2,490 rows / batch) steps of the estimate's step at the task's batch and length."""
    from bench.cli import main
    from bench.tools.estimate import estimate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["run", "--suite", suite, "--dry-run", "--gpu", "h200"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("40 cells, ") and "unknown" not in out[-1] and "--gpu h200" in out[-1]
    rte = next(c for c in expand(load_suite(suite)) if c.task.name == "rte")
    model, batch, length = rte.model.name, rte.train.batch_size, rte.train.max_length
    steps = math.ceil(rte.train.epochs * 2490 / batch)
    step = estimate(model, "lora", batch, length)["flops"]["train_step"]
    assert f"train FLOPs {steps * step:.3g} ({steps} steps)" in next(line for line in out if "task=rte seed=1" in line)


@pytest.mark.parametrize("suite", ["lora-paper-glue", "lora-paper-glue-large"])
def test_mrpc_rte_and_stsb_start_from_the_mnli_cell_of_their_seed(suite):
    """The authors' scripts start MRPC, RTE and STS-B from their MNLI-adapted LoRA weights (--lora_path)."""
    cells = expand(load_suite(suite))
    mnli = {c.seed: c for c in cells if c.task.name == "mnli"}
    assert all(c.keeps_state for c in mnli.values())
    for cell in cells:
        started = cell.task.name in ("mrpc", "rte", "stsb")
        assert cell.init_from == (mnli[cell.seed].id if started else None), (cell.task.name, cell.seed)
