"""The Fisher methods (fishmask, child-tuning) score the loss the cell trains: its objective's (T-Few's lm + ul + ln
over the answer options; a mixture's per-row loss through each row's task head; a routing method's rows through
their task's route), on batches collated as training collates them. Before, the scoring passes took the model's own
loss on batches collated for it: a T-Few cell's masks were chosen by the gold answer's cross-entropy alone, a
classifier mixture's cell failed in setup (no task head selected), and Poly's rows in a mixture were not routed by
their task."""

from __future__ import annotations

import pytest
import torch

from bench.cell import recipe
from bench.cell.batching import to_device
from bench.cell.train import training_batches
from bench.methods import fisher
from bench.plan import grid
from bench.plan.suite import load_suite

CELLS = {  # a suite's lines for each kind of cell whose objective is not the model's own loss
    "tfew": "models: [tiny-t5]\ntasks: [synth-choice]\n",
    # T-Few's own draw: balanced by class, each example under a template drawn afresh (the scored batch is training's)
    "tfew-balanced": "models: [tiny-t5]\ntasks: [synth-choice]\n",
    "mixture": "models: [tiny-encoder]\nmixtures:\n  - {name: synth-mix, tasks: [synth-polarity, synth-intensity], "
               "mixing: {rule: proportional, cap: 12}}\ntasks: [synth-mix]\n",
    # Poly's router picks each row's skills by its task (bench/layers/task_heads.select, which the objective calls)
    "routed": "models: [tiny-t5]\nmixtures:\n  - {name: synth-mix, tasks: [synth-polarity, synth-choice], "
              "mixing: {rule: proportional, cap: 12}}\ntasks: [synth-mix]\n",
}
ROWS = 4  # one training batch: fishmask scores its rows one by one, child-tuning the batch at once
SETTINGS = {"fishmask": f"{{fisher_samples: {ROWS}, keep_ratio: 0.1}}", "child-tuning": "{fisher_batches: 1}"}


@pytest.mark.parametrize("method", ["fishmask", "child-tuning"])
@pytest.mark.parametrize("kind", ["tfew", "tfew-balanced", "mixture", "routed"])
def test_the_fisher_scores_are_of_the_loss_the_cell_trains(method, kind, write_suite, tmp_path, monkeypatch):
    """Each scored tensor's score is the mean, over the cell's first training batch's examples (fishmask) or over
    that batch (child-tuning), of the squared gradient of the cell's objective's loss (max_grad_norm null: no
    clipping; fp32, so that the two computations agree to rounding on CUDA too), each computed here by autograd apart
    from the method."""
    monkeypatch.setenv("PEFT_BENCH_CACHE", str(tmp_path / "cache"))
    scored = []  # (tensors, scores) of each fisher_scores call
    scores_of = fisher.fisher_scores

    def recording(model, params, *args, **kwargs):
        scores = scores_of(model, params, *args, **kwargs)
        scored.append((params, scores))
        return scores

    monkeypatch.setattr(fisher, "fisher_scores", recording)
    objective = {"tfew": "{objective: tfew, ", "tfew-balanced": "{objective: tfew, balanced_batches: true, "
                 "redraw_templates: true, "}.get(kind, "{")
    entry = f"{{name: {method}, overrides: {SETTINGS[method]}}}"
    entry = f"{{compose: [poly, {entry}]}}" if kind == "routed" else entry
    suite = write_suite(f"name: s\nmethods: [{entry}]\n{CELLS[kind]}"
                        f"seeds: [1]\ntrain: {objective}max_steps: 1, batch_size: {ROWS}, max_length: 32, "
                        "max_train_samples: 12, max_eval_samples: 8, max_grad_norm: null, precision: fp32}\n")
    (cell,) = grid.expand(load_suite(str(suite)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = recipe.setup(cell, device)
    ((params, scores),) = scored
    first = next(training_batches(run.data.features, cell.train, cell.seed))
    pieces = [[row] for row in first] if method == "fishmask" else [first]
    model = run.adapted.model.eval()  # the methods change no weight before training
    for p in params:  # a tensor with no selected entry trains no more
        p.requires_grad_(True)
    expected = [torch.zeros_like(p) for p in params]
    for piece in pieces:
        loss = run.objective.loss(model, to_device(run.objective.collate(piece), device))
        for total, grad in zip(expected, torch.autograd.grad(loss, params, allow_unused=True)):
            if grad is not None:
                total += grad ** 2 / len(pieces)
    assert any(bool(s.any()) for s in expected)
    for p, got, want in zip(params, scores, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12 * float(want.abs().max()))
