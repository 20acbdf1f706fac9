"""One classifier head per task of a multi-task cell, in the place of the model's own head.

A multi-task cell on a classifier model (bench/cell/multitask.py) trains one body (and one method) on a mixture
of tasks, each task with a head of its own sized to its labels (a regression task: one output), as multi-task
GLUE models are trained (Liu et al. 2019, MT-DNN; Pfeiffer et al. 2021's MT-A). `TaskHeads` sits where the head
was, under the head's name, so everything that finds the head by name (train_head, peft's modules_to_save, the
head counts) finds every task's head. Which head reads a row is set before each forward (`select`): one task
index for a whole evaluation set, or a tensor of per-row indices for a mixed training batch, where each row's
logits are its own head's outputs, the columns past its labels filled with -inf (no probability under a
softmax; a regression row reads column 0). Other modules that route by task (a multi-task method's router) are
told the same way (`select`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class TaskHeads(nn.Module):
    def __init__(self, heads: list[nn.Module], widths: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.widths = list(widths)  # each head's outputs (its labels; 1 for regression)
        self.task_rows: int | torch.Tensor | None = None  # set by select(): which head reads which row

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.task_rows is None:
            raise RuntimeError("TaskHeads: no task selected (bench.layers.task_heads.select before the forward)")
        if isinstance(self.task_rows, int):
            return self.heads[self.task_rows](*args, **kwargs)
        outputs = [head(*args, **kwargs) for head in self.heads]
        first = outputs[0]
        logits = first.new_full((first.shape[0], max(self.widths)), -torch.inf)
        for k, out in enumerate(outputs):
            padded = nn.functional.pad(out, (0, logits.shape[1] - out.shape[1]), value=-torch.inf)
            logits = torch.where((self.task_rows == k).unsqueeze(-1), padded, logits)
        return logits


def fresh_head(head: nn.Module, width: int, init) -> nn.Module:
    """A copy of `head` with its last linear layer `width` wide, every weight drawn anew with `init` (the
    model's own _init_weights)."""
    made = copy.deepcopy(head)
    if isinstance(made, nn.Linear):
        made = nn.Linear(made.in_features, width, bias=made.bias is not None)
    else:
        name, last = [(n, m) for n, m in made.named_modules() if isinstance(m, nn.Linear)][-1]
        parent = made.get_submodule(name.rpartition(".")[0]) if "." in name else made
        setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, width, bias=last.bias is not None))
    made.apply(init)
    weight = next(head.parameters())
    return made.to(device=weight.device, dtype=weight.dtype)


def install(model: nn.Module, head_name: str, widths: list[int], seed: int) -> TaskHeads:
    """Replace the model's head `head_name` by one head per task (`widths`: each task's outputs), drawn in task
    order from `seed`."""
    original = getattr(model, head_name)
    torch.manual_seed(seed)
    heads = TaskHeads([fresh_head(original, w, model._init_weights) for w in widths], widths)
    setattr(model, head_name, heads)
    return heads


def select(model: nn.Module, rows: int | torch.Tensor) -> None:
    """Tell every module of the model that reads each row's task (it has a `task_rows` attribute: TaskHeads, of
    which peft keeps a trained copy beside the original; a method's task router, bench/methods/poly.py; the task
    embeddings of bench/methods/hyperformer.py) which task the rows of the next forward are: one task index, or
    each row's."""
    for module in model.modules():
        if hasattr(module, "task_rows"):
            module.task_rows = rows
