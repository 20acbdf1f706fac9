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


# A second transcription of rabeehk/hyperformer@56b0f99 hyperformer/configs (read again for this test): the keys
# every config shares, and HyperFormer++'s and the adapters' own (hyperformer++.json, adapters.json). The README
# runs every script on 4 GPUs (torch.distributed.launch --nproc_per_node=4).
HYPERFORMER_CONFIGS = {"learning_rate": 3e-4, "max_source_length": 128, "warmup_steps": 500, "max_steps": 65536,
                       "per_device_train_batch_size": 32, "temperature": 10,
                       "tasks": ["rte", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "cola"]}
HYPERFORMER_PP = {"reduction_factor": 32, "task_embedding_dim": 64, "projected_task_embedding_dim": 64,
                  "non_linearity": "gelu_new"}
GPUS = 4


def test_the_hyperformer_recipe_is_the_authors_configs():
    """48 cells: HyperFormer++ and T5 fine-tuning on the mixture of the authors' GLUE tasks but STS-B (3 seeds),
    T5 fine-tuning and Houlsby adapters on each of those 7 tasks alone (3 seeds), every one at the configs' learning
    rate, 65,536 steps of 4 × 32 rows, 500 warmup steps and 128 input tokens."""
    cells = expand(load_suite("hyperformer-paper-glue"))
    assert len(cells) == 48 and {c.model.name for c in cells} == {"t5-base"} and {c.seed for c in cells} == {1, 2, 3}
    seven = [t for t in HYPERFORMER_CONFIGS["tasks"] if t != "stsb"]
    (mixture,) = {c.task.name: c.task for c in cells if c.task.members}.values()
    assert [m.name for m in mixture.members] == seven
    assert mixture.source["mixing"]["rule"] == "temperature"
    assert mixture.source["mixing"]["temperature"] == HYPERFORMER_CONFIGS["temperature"]
    by_method = {}
    for cell in cells:
        by_method.setdefault(cell.method, set()).add(cell.task.name)
        t = cell.train
        assert (t.lr, t.batch_size, t.max_steps) == (HYPERFORMER_CONFIGS["learning_rate"],
                                                     GPUS * HYPERFORMER_CONFIGS["per_device_train_batch_size"],
                                                     HYPERFORMER_CONFIGS["max_steps"]), cell.id
        assert int(t.warmup_ratio * t.max_steps) == HYPERFORMER_CONFIGS["warmup_steps"]
        assert t.max_length == HYPERFORMER_CONFIGS["max_source_length"] and t.weight_decay == 0.0
    assert by_method == {"hyperformer": {mixture.name}, "full": {*seven, mixture.name}, "adapter-houlsby": set(seven)}
    hyper = next(c for c in cells if c.method == "hyperformer").method_config
    adapter = next(c for c in cells if c.method == "adapter-houlsby").method_config
    assert (hyper["reduction_factor"], hyper["task_embedding_dim"], hyper["projected_task_embedding_dim"],
            hyper["activation"]) == tuple(HYPERFORMER_PP.values())
    assert (adapter["reduction_factor"], adapter["activation"]) == (32, "gelu_new")


def test_the_mixtures_shares_are_the_authors_temperature_sampling():
    """The authors' MultiTaskBatchSampler draws a task with probability (n_i / N)^(1/T) normalised (T = 10, N the
    rows of every task): the mixture's rows per task are those shares of its total, to the row, on the GLUE
    training splits' stated sizes."""
    from bench.tasks.prepare import mixture_counts

    (mixture,) = {c.task.name: c.task for c in expand(load_suite("hyperformer-paper-glue")) if c.task.members}.values()
    sizes = {m.name: m.source["split_rows"]["train"] for m in mixture.members}
    total, t = sum(sizes.values()), HYPERFORMER_CONFIGS["temperature"]
    weights = {name: (n / total) ** (1 / t) for name, n in sizes.items()}
    expected = {name: w / sum(weights.values()) * total for name, w in weights.items()}
    counts = mixture_counts(sizes, mixture.source["mixing"])
    assert all(abs(counts[name] - expected[name]) <= 0.5 for name in sizes), (counts, expected)
    assert sizes["mnli"] == 392_702 and counts["rte"] > 40 * sizes["rte"]  # RTE's 2,490 rows repeat 40 times over


def test_the_hyperformer_recipe_is_priced_offline(capsys, monkeypatch):
    """Every cell priced without the hub: HyperFormer++'s cell is 65,536 steps of its step on the 7-task mixture at
    batch 128 and length 128."""
    from bench.cli import main
    from bench.tools.estimate import estimate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["run", "--suite", "hyperformer-paper-glue", "--dry-run", "--gpu", "h200"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("48 cells, ") and "unknown" not in out[-1] and "--gpu h200" in out[-1]
    cell = next(c for c in expand(load_suite("hyperformer-paper-glue")) if c.method == "hyperformer")
    step = estimate("t5-base", "hyperformer", 128, 128, task=cell.task, settings=cell.method_config)
    line = next(line for line in out if line.startswith(cell.id))
    assert f"train FLOPs {65536 * step['flops']['train_step']:.3g} (65536 steps)" in line
