"""A task as the harness sees it: its definition (TaskSpec), the prompts text-to-text models read, and how a
row is rendered. Definitions are parsed and checked by bench/tasks/schema.py, gathered by bench/tasks/registry.py.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field

from bench.tasks import metrics as metric_fns

DEMO_SEPARATOR = "\n\n"  # between in-context demonstrations, and before the evaluated prompt

TASK_TYPES = ("classification", "regression", "generation", "multiple_choice")

@dataclass(frozen=True)
class Prompt:
    """A text-to-text template and its answer options (format strings; None for generation)."""

    text: str
    answers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    type: str
    source: dict
    text: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    label: str | None = None
    labels: tuple[str, ...] | None = None
    target: str | None = None
    prompts: tuple[Prompt, ...] = ()  # several: evaluated with each, scores are the median (T-Few)
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 32, "num_beams": 1})
    group_by: str | None = None  # rows sharing this column are one example with several references
    length_normalize: bool = False  # rank classification by mean (not total) log-likelihood per token
    eval_task: "TaskSpec | None" = None  # evaluate on another task (instruction tuning -> MMLU)
    demonstrations: dict | None = None  # a fixed k-shot evaluation (_DEMONSTRATION_KEYS)
    members: tuple["TaskSpec", ...] = ()  # a pre-training stage's mixture (bench/plan/stages.py): trained, not scored
    origin: str = ""  # the file:line that defined it

    @property
    def num_labels(self) -> int | None:
        if self.members:  # a mixture's model is built with its widest head (each task then gets its own)
            return max(m.num_labels or 1 for m in self.members)
        if self.type == "regression":
            return 1
        return len(self.labels) if self.labels else None

    def answer_counts(self) -> list[int]:
        """The distinct numbers of answer options of the task's templates (its label names where a template gives
        none), ascending: what rank classification scores per example under each template."""
        return sorted({len(prompt.answers or self.labels or ()) for prompt in self.prompts}) or [len(self.labels or ())]

    @property
    def evaluation(self) -> "TaskSpec":
        return self.eval_task or self

    # Row access and prompt rendering: what a row of this task says, before any tokenizer sees it.

    @staticmethod
    def value(row: dict, column: str):
        """A column's value; dotted names reach into nested columns (`translation.ro`)."""
        if column in row:
            return row[column]
        value = row
        for part in column.split("."):
            value = value[part]
        return value

    def gold(self, row: dict):
        """The row's label as a class index or a float. A value equal to a label's name is that label, even
        when the file stores it as a number (StoryCloze's endings 1 and 2 under labels ["1", "2"]); other
        integers and numeric strings are class indices."""
        value = self.value(row, self.label)
        if self.type == "regression":
            return float(value)
        if self.labels and not isinstance(value, (bool, float)) and str(value) in self.labels:
            return self.labels.index(str(value))
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"task '{self.name}': label {value!r} is neither a class index nor one of "
                             f"{list(self.labels or [])}") from None

    def render(self, prompt: Prompt, row: dict) -> str:
        return prompt.text.format(**{c: row[c] for c in self.text})

    def answers(self, prompt: Prompt, row: dict) -> list[str]:
        """The answer options of a row under a template (the label names when the task gives none)."""
        return [a.format(**{c: row[c] for c in self.text}) for a in prompt.answers or self.labels]

    def target_text(self, prompt: Prompt, row: dict) -> str:
        if self.type in ("classification", "multiple_choice"):
            return self.answers(prompt, row)[self.gold(row)]
        return str(self.value(row, self.target))

    def solved(self, prompt: Prompt, rows: list[dict], header: str = "") -> str:
        """Solved examples for in-context learning, each rendered with its answer, after a header."""
        return (header + DEMO_SEPARATOR if header else "") + "".join(
            f"{self.render(prompt, r)} {self.target_text(prompt, r)}{DEMO_SEPARATOR}" for r in rows)

    def identity(self) -> dict:
        """Everything that changes results: goes into the cell id."""
        ident = asdict(self)
        for key in ("description", "origin"):
            ident.pop(key)
        if ident["demonstrations"] is None:  # added later: tasks without it keep their cells' ids
            ident.pop("demonstrations")
        if self.eval_task is not None:
            ident["eval_task"] = self.eval_task.identity()
        if self.members:
            ident["members"] = [m.identity() for m in self.members]
        else:  # added later: other tasks keep their cells' ids
            ident.pop("members")
        return ident

    def describe(self) -> dict:
        ev = self.evaluation
        return {"name": self.name, "description": self.description, "type": self.type,
                "source": self.source, "main_metric": ev.main_metric, "prompts": len(self.prompts),
                "eval_task": self.eval_task.name if self.eval_task else None,
                "metrics": [{"name": m, "higher_is_better": metric_fns.METRICS[m].higher_is_better}
                            for m in ev.metrics]}


def template_fields(template: str) -> set[str]:
    """Top-level column names a format string reads ({translation[en]} reads 'translation')."""
    return {f.split("[")[0].split(".")[0] for _, f, _, _ in string.Formatter().parse(template) if f}
