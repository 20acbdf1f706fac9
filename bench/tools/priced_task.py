"""The cell's task in what the pricing builds and steps (`estimate`'s `task`: `run --dry-run`'s FLOPs and the
memory a scheduler is asked for, bench/tools/plan_cost.py), as the cell's setup makes them (bench/cell/recipe.py):

- the model's head is the task's: a classifier with the task's labels (one output for regression), a masked-LM
  stage's MLM head, the LM head of a text-to-text model;
- a mixture on a classifier model has a head per member (bench/cell/multitask.install_heads);
- the method is built with the task in its ApplyContext, so what it sizes by the mixture's tasks (Poly's router, a
  task embedding per task) is the cell's, and what a masked-LM stage builds (MAD-X's language parts) is the stage's;
- the fake batch's rows are each one task's, as a mixed training batch's are (row i: member i mod n), through the
  loss the cell trains on (bench/cell/multitask.mixed_terms);
- a cell whose objective is T-Few's (`train: {objective: tfew}`) steps on an options batch, as
  bench/cell/objectives.py's option_batch makes it (options_batch): every (example, answer option) pair a row, each
  example with its task's most answer options (answer_options), through tfew's terms with the cell's settings; an
  option's tokens are its measured length where the plan measured them (bench/tools/prompt_lengths.py: the
  objective's option_tokens, from the priced cell through cell_objective), else the row's (an upper bound).

Without a task (`peft-bench estimate` without `--task`): a 2-way classifier on an encoder, the LM head elsewhere,
one task.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import NamedTuple

from bench.errors import Unsupported


class OptionsObjective(NamedTuple):
    """What of a T-Few-objective cell's training its priced step depends on (part of plan_cost.shape_of): the answer
    options of each example (answer_options), the terms' settings (bench/config.py TrainConfig) and the tokens of
    an answer option as priced (bench/tools/prompt_lengths.py: the measured longest option of an example; None: as
    long as the row, options_batch's upper bound)."""

    options: int
    tfew_lm: str
    unlikelihood: bool
    unlikelihood_offset: float
    option_tokens: int | None = None


def objective_of(train, task) -> OptionsObjective | None:
    """The options step a cell with training settings `train` on `task` runs, or None: its step is the LM loss's
    (objective lm, or no task to take answer options from)."""
    if train.objective != "tfew" or task is None:
        return None
    return OptionsObjective(answer_options(task), train.tfew_lm, train.unlikelihood, train.unlikelihood_offset)


def cell_objective(cell) -> OptionsObjective | None:
    """objective_of the cell's training and task, its answer options at the length the plan priced them
    (Cell.option_tokens, set by prompt_lengths.at_priced_length)."""
    objective = objective_of(cell.train, cell.task)
    return objective if objective is None else objective._replace(option_tokens=cell.option_tokens)


def answer_options(task) -> int:
    """The most answer options an example of `task` has: each template's answers (TaskSpec.answers: the template's
    own, else the label names), the largest over the templates, since training may draw any template for any example
    (redraw_templates): an upper bound where templates differ, the number itself where they agree."""
    return max(task.answer_counts())


def task_key(task, kind: str) -> tuple:
    """What of a cell's task its priced step depends on, for a model of `kind` (part of plan_cost.shape_of, so cells
    of one model, method and training shape but another head or mixture are priced apart): the head and, on a
    classifier, its outputs (each member's on a mixture, with the members' types); a mixture's number of tasks."""
    from bench.models import head_for
    from bench.tasks.mixture import member_widths

    if task is None:
        return ()
    try:
        head = head_for(kind, task.type)
    except Unsupported:  # the cell is refused when it is built; its price is then unknown
        return (task.type,)
    if head != "classifier":
        return head, len(task.members)
    if task.members:
        return head, tuple(member_widths(task)), tuple(m.type for m in task.members)
    return head, task.type, task.num_labels


def task_bundle(spec, task, dtype: str, attention: str, pooling: str | None = None):
    """The model on the meta device with the head the cell's task gives it (a head per member of a mixture on a
    classifier model), reading the sequence as the cell's `pooling` says (None: the model's convention); without a
    task, estimate's default head."""
    from bench.cell import multitask
    from bench.models import load_bundle

    if task is None:
        classifier = default_head(spec.kind) == "classifier"
        return load_bundle(spec, "classification" if classifier else "generation", 2 if classifier else None, seed=0,
                           meta=True, pooling=pooling, weights_dtype=dtype, attention=attention)
    bundle = load_bundle(spec, task.type, task.num_labels, seed=0, meta=True, pooling=pooling, weights_dtype=dtype,
                         attention=attention)
    if task.members:
        multitask.install_heads(bundle, task, seed=0)
    return bundle


def fake_batch(head: str, task, batch_size: int, seq_len: int, bundle=None):
    """(batch, loss function) of the fake step: `batch_size` rows of `seq_len` tokens (the last the model's
    end-of-sequence token where `bundle` gives one), labels as the `head` takes them (a class index, a regression
    target, or the tokens), and the model's own loss; on a mixture (`task` with members, `bundle` its model's),
    each row one member's and the mixed loss."""
    import torch

    from bench.cell.multitask import mixed_terms
    from bench.cell.objectives import lm_loss, lm_terms

    ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
    eos = getattr(bundle.model.config, "eos_token_id", None) if bundle is not None else None
    if isinstance(eos, int):  # a tokenized row ends with it; T5's classifier reads each row there
        ids[:, -1] = eos
    regression = task is not None and (task.type == "regression" or bool(task.members))  # a mixture's are floats
    labels = ids if head != "classifier" else torch.zeros(batch_size, dtype=torch.float if regression else torch.long)
    batch = {"input_ids": ids, "labels": labels}
    if task is None or not task.members:
        return batch, lm_loss
    # the rows' tasks stay real tensors (not in the batch the fake mode converts): a router reads their values
    rows = torch.arange(batch_size) % len(task.members)
    terms = mixed_terms(bundle, task, lm_terms)
    return batch, partial(_mixed_loss, terms=terms, rows=rows)


def options_batch(bundle, task, objective: OptionsObjective, batch_size: int, seq_len: int):
    """(batch, loss function) of a T-Few-objective cell's fake step: `batch_size` examples, each with
    `objective.options` answer options, collated and scored by the cell's own Objective (objectives.objective_for:
    option_batch's layout, tfew's terms with the cell's settings). On a decoder each (example, option) pair is one row
    of `seq_len` tokens, prompt and option in one sequence (bench/tools/prompt_lengths.py prices it at their measured
    lengths' sum), its last `objective.option_tokens` the option's (at least one prompt token; None: one), ending in
    the model's end-of-sequence token. On an encoder-decoder each prompt is one encoder row of `seq_len` tokens and
    each option one decoder row of `objective.option_tokens` (None: `seq_len`, an upper bound for a few-token option,
    the bound where the options were not measured). No padding: the rows of a kind are as long (a real batch pads
    each option to its batch's longest: the measured length is an example's longest option); a decoder's batch then
    has no attention mask (a decoder drops an all-ones one: a real step on the batch with its mask is the same
    step), an encoder-decoder's has the encoder's, all ones, as collate makes it (token_logprobs encodes each prompt
    once with it). Unsupported where the cell is refused (objective_for: a classifier head, a task without answer
    options)."""
    from bench.cell.objectives import objective_for

    eos = getattr(bundle.model.config, "eos_token_id", None)
    end = [eos if isinstance(eos, int) else 0]
    if bundle.kind == "encoder-decoder":
        prompt, option = [0] * (seq_len - 1) + end, [0] * ((objective.option_tokens or seq_len) - 1) + end
    else:  # lm_example puts prompt and option in one row
        option_tokens = min(objective.option_tokens or 1, seq_len - 1)
        prompt, option = [0] * (seq_len - option_tokens), [0] * (option_tokens - 1) + end
    features = [{"prompt_ids": prompt, "choice_ids": [option] * objective.options, "gold": 0}] * batch_size
    # the pad id pads nothing here (every row is as long), and a meta-built bundle has no tokenizer
    reader = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0), head=bundle.head, kind=bundle.kind)
    chosen = objective_for("tfew", reader, task.type, objective.tfew_lm, objective.unlikelihood_offset,
                           objective.unlikelihood)  # Unsupported where the cell refuses the objective
    batch = chosen.collate(features)
    if bundle.kind != "encoder-decoder":  # all ones: the model drops it (an unpadded step's, as fake_batch's)
        del batch["attention_mask"]
    return batch, chosen.loss


def collate_mask_bytes(kind: str, objective: OptionsObjective | None, seq_len: int) -> int:
    """The bytes per example of collate's int64 attention mask that the fake batch (fake_batch, options_batch) leaves
    out and a cell's collated batch holds: one row of `seq_len` per example; an options batch's, one per option on a
    decoder, none on an encoder-decoder (its batch keeps the encoder's mask, which token_logprobs reads)."""
    if objective is None:
        return 8 * seq_len
    return 0 if kind == "encoder-decoder" else 8 * seq_len * objective.options


def _mixed_loss(model, batch: dict, terms, rows):
    return sum(terms(model, {**batch, "task": rows}).values())


def default_head(kind: str) -> str:
    """estimate's head without a task: a classifier on an encoder, the LM head elsewhere."""
    return "classifier" if kind == "encoder" else "lm"
