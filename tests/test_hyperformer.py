"""HyperFormer++ (bench/methods/hyperformer.py): its trainable count in closed form on T5-base (two stacks, as the
paper's model) and RoBERTa-base (one), the number of tasks a term; a 2-task mixture on a tiny encoder, where
rows of both tasks share each batch: every row is computed with its own task's generated adapters; and mixtures
run end to end on a tiny encoder and a tiny T5 (text-to-text). (Parity with the authors' code:
tests/test_parity_hyperformer.py.)"""

from __future__ import annotations

import json
import types

import pytest
import torch

from bench import methods
from bench.cell import multitask
from bench.cli import main
from bench.config import TrainConfig
from bench.layers import task_heads
from bench.layers.hyperformer import ADAPTER, BLOCKS, HYPERNET, TASK_EMBEDDINGS
from bench.methods.base import ApplyContext
from bench.plan.suite import load_suite
from tests import closed_forms
from tests.adapting import build_bundle

MIXED = """\
name: mixed
methods: [hyperformer]
models: [tiny-encoder]
mixtures:
  - {name: synth-mix, tasks: [synth-polarity, synth-intensity], mixing: {rule: proportional, cap: 12}}
tasks: [synth-mix]
seeds: [1]
train: {batch_size: 4, max_steps: 2, max_length: 32, eval_batch_size: 32, max_eval_samples: 16, max_train_samples: 20}
"""


def applied(model: str, n_tasks: int, task=None, meta: bool = False):
    bundle = build_bundle(model, meta=meta, **({"task": task} if task is not None else {}))
    method = methods.get("hyperformer")
    tasks = task if task is not None else types.SimpleNamespace(members=[f"task{i}" for i in range(n_tasks)])
    if task is not None:
        multitask.install_heads(bundle, task, seed=0)
    with torch.device("meta" if meta else "cpu"):
        adapted = method.apply(bundle.model, method.resolve({}, bundle.arch, str),
                               ApplyContext(bundle, TrainConfig(), 1, task=tasks))
    return bundle, adapted


@pytest.mark.parametrize("n_tasks", [1, 8])
def test_t5_base_count_is_the_closed_form_and_the_papers_share(n_tasks):
    """T5-base (d 768, 12 + 12 layers, b = 768 // 32 = 24): per stack 12·64 + 2·64 + (192 + 1)·128 + (128 + 1)·64
    + 2·64 + 65·(2·768·24 + 24 + 3·768) = 2,581,464; 64 per task; T5's 62 layer norms of 768."""
    bundle, adapted = applied("t5-base", n_tasks, meta=True)
    total = sum(p.numel() for n, p in bundle.model.named_parameters() if HYPERNET not in n
                and TASK_EMBEDDINGS not in n)
    norms = closed_forms.t5_norms(768, 12, 12)
    trainable = adapted.params()["trainable"]
    assert trainable == closed_forms.hyperformer(768, [12, 12], n_tasks) + norms \
        == 2 * 2_581_464 + 64 * n_tasks + 62 * 768
    if n_tasks == 8:  # the paper's Table 1: 0.29 % of T5-base per task, for its 8 GLUE tasks (norms aside)
        assert round(100 * (trainable - norms) / 8 / total, 2) == 0.29


@pytest.mark.parametrize("n_tasks", [1, 8])
def test_roberta_base_count_is_the_closed_form(n_tasks):
    """One stack of 12 layers: 2,581,464, 64 per task, the 25 layer norms of 768 (embeddings' and 2 per layer)
    and the task head."""
    _, adapted = applied("roberta-base", n_tasks, meta=True)
    norms = 2 * 768 + 12 * 4 * 768
    assert adapted.params()["trainable"] - closed_forms.roberta_classification_head(768) == \
        closed_forms.hyperformer(768, [12], n_tasks) + norms == 2_581_464 + 64 * n_tasks + 25 * 2 * 768


def test_each_row_of_a_mixed_batch_reads_its_own_tasks_adapters(write_suite):
    task = load_suite(str(write_suite(MIXED))).task_registry["synth-mix"]
    bundle, adapted = applied("tiny-encoder", 2, task=task)
    model = adapted.model
    (tasks,) = [m for n, m in model.named_modules() if n == TASK_EMBEDDINGS]
    assert tasks.embeddings.shape == (2, 64)
    # the two tasks' generated adapters differ, at every site
    sites = [m for n, m in model.named_modules() if n.endswith(ADAPTER)]
    assert len(sites) == len(BLOCKS) * 2  # two sites per layer of the tiny encoder's 2
    for site in sites:
        made = site.hypernet(tasks.embeddings, site.layer, site.block)
        assert all(not torch.allclose(tensor[0], tensor[1]) for tensor in made.values())

    # a few steps of the mixed objective, so the adapters are trained ones; then every row, alone under its task
    objective = multitask.objective(bundle, task, None)
    ids = torch.randint(5, 60, (4, 10))
    rows = torch.tensor([0, 1, 1, 0])
    labels = torch.tensor([1.0, 0.3, 0.8, 0.0])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        loss = objective.terms(model, {"input_ids": ids, "task": rows, "labels": labels})["lm"]
        loss.backward()
        assert tasks.embeddings.grad[0].abs().sum() > 0 and tasks.embeddings.grad[1].abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        task_heads.select(model, rows)
        together = model(input_ids=ids).logits
        for r, t in enumerate(rows.tolist()):
            width = [2, 1][t]
            task_heads.select(model, t)
            alone = model(input_ids=ids[r:r + 1]).logits[0, :width]
            torch.testing.assert_close(together[r, :width], alone, rtol=1e-5, atol=1e-6)
            # the adapters matter: the other task's adapters under the same head give another output
            tasks.task_rows = 1 - t
            assert not torch.allclose(model(input_ids=ids[r:r + 1]).logits[0, :width], alone, atol=1e-4)



def test_task_ids_for_other_rows_than_the_batchs_are_refused():
    """An objective that repeats each row per answer option would hand the adapters one id per original row."""
    _, adapted = applied("tiny-encoder", 2)
    task_heads.select(adapted.model, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="3 task ids for 2 rows"):
        adapted.model(input_ids=torch.randint(5, 60, (2, 10)))

RUN = """\
name: hyper
methods: [hyperformer]
models: [tiny-encoder, tiny-t5]
mixtures:
  - {name: synth-mix, tasks: [synth-polarity, synth-intensity], mixing: {rule: proportional, cap: 12}}
  - {name: synth-t2t, tasks: [synth-polarity, synth-choice], mixing: {rule: proportional, cap: 8}}
tasks: [synth-polarity, synth-mix, synth-t2t]
exclude:
  - {model: tiny-t5, task: synth-mix}
  - {model: tiny-encoder, task: synth-t2t}
seeds: [1]
train: {batch_size: 4, max_steps: 2, max_length: 32, eval_batch_size: 32, max_eval_samples: 16, max_train_samples: 20}
"""


@pytest.mark.slow
def test_mixtures_train_once_and_are_scored_on_every_task(tmp_path, write_suite):
    """On both models the mixture's cell stores one task embedding (64) more than the single-task cell."""
    results = tmp_path / "results"
    assert main(["run", "--suite", str(write_suite(RUN)), "--results", str(results), "--quiet", "--threads", "1"]) == 0
    records = {(r["cell"]["model"], r["cell"]["task"]): r
               for r in (json.loads(p.read_text()) for p in (results / "hyper").glob("*.json"))}
    assert len(records) == 4 and {r["status"] for r in records.values()} == {"ok"}
    for model, mixed in (("tiny-encoder", "synth-mix"), ("tiny-t5", "synth-t2t")):
        scores = records[(model, mixed)]["scores"]["metrics"]
        assert scores["task_average"] is not None and "synth-polarity:accuracy" in scores
        assert records[(model, mixed)]["params"]["method"] - records[(model, "synth-polarity")]["params"]["method"] \
            == 64
