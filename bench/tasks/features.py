"""Rows -> token ids, for the two heads a model can have.

- "classifier": the text columns go through the tokenizer as a (pair of) sequence(s); the label is
  the class index (or a float for regression).
- "lm" (text-to-text): a template renders the input; the target is the gold answer option
  (classification: the label's word; multiple choice: the row's option) or the reference text
  (generation). Decoder-only models see prompt + target in one sequence, the prompt masked out of
  the loss. Evaluation scores every answer option (rank classification) or generates.
In-context learning prepends rendered demonstrations (with their answers) to every prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.tasks.spec import Prompt, TaskSpec

# A text-to-text example is a prompt and a target: an encoder-decoder reads the prompt and predicts the target;
# a decoder-only model reads both in one sequence, the prompt masked out of the loss.
IGNORE = -100  # a label position that no loss counts (prompt tokens, padding)


def lm_example(kind: str, prompt: list[int], target: list[int]) -> dict:
    if kind == "encoder-decoder":
        return {"input_ids": prompt, "labels": target}
    return {"input_ids": prompt + target, "labels": [IGNORE] * len(prompt) + target}


@dataclass
class EvalSet:
    """What evaluation needs: model inputs per example, plus gold labels or references."""

    features: list[dict]  # input ids per example (prompts only for "lm")
    gold: list  # class index / float per example, or a list of reference strings
    choices: list[list[list[int]]] | None = None  # per example, the token ids of each answer option

    def rows(self, start: int, stop: int | None) -> "EvalSet":
        """The examples from `start` up to `stop` (None: the end), with their gold and options."""
        choices = self.choices[start:stop] if self.choices is not None else None
        return EvalSet(self.features[start:stop], self.gold[start:stop], choices)


def demonstration_ids(task: TaskSpec, tokenizer, prompt: Prompt, rows: list[dict], header: str = "") -> list[int]:
    """Token ids of the in-context demonstrations (after a header): tokenised once, shared by every evaluated
    row, and (under the first template) what in-context learning keeps per task in place of trained weights."""
    return tokenizer(task.solved(prompt, rows, header), add_special_tokens=False)["input_ids"]


def _encode_prompt(tokenizer, kind: str, text: str, max_length: int, demo_ids: list[int] = ()) -> list[int]:
    """A prompt's token ids: the row's text cut at its end when too long (as classifier inputs are);
    in-context demonstrations go before it in whatever room is left, losing their beginning first."""
    if kind == "encoder-decoder":
        head, query = [], tokenizer(text, truncation=True, max_length=max_length)["input_ids"]  # keeps </s>
    else:
        head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        query = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - len(head)]
    room = max_length - len(head) - len(query)
    shown = list(demo_ids[-room:]) if demo_ids and room > 0 else []
    return head + shown + query


def _encode_target(tokenizer, kind: str, text: str, max_length: int) -> list[int]:
    if kind == "decoder" and not text.startswith(" "):
        text = " " + text  # a new word after the prompt, as the model saw text in pretraining
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - 1]
    return ids + [tokenizer.eos_token_id]


def prompt_per_row(task: TaskSpec, n: int, seed: int) -> list[int]:
    """Which template each training row uses: drawn with the seed, so every method sees the same."""
    rng = random.Random(seed)
    return [rng.randrange(len(task.prompts)) for _ in range(n)]


def train_features(task: TaskSpec, bundle, rows: list[dict], max_length: int, seed: int = 0,
                   all_templates: bool = False) -> list[dict]:
    """A feature per row, under the template the seed drew for it; `all_templates` (a task with several)
    adds the row's feature under every template as `variants`, for training to redraw from each step."""
    tok, kind = bundle.tokenizer, bundle.kind
    if bundle.head == "classifier":
        out = []
        for row in rows:
            enc = tok(*[str(task.value(row, c)) for c in task.text], truncation=True, max_length=max_length)
            out.append({"input_ids": enc["input_ids"], "labels": task.gold(row)})
        return out
    out = []
    for row, p in zip(rows, prompt_per_row(task, len(rows), seed)):
        if all_templates and len(task.prompts) > 1:
            variants = [_lm_feature(task, tok, kind, prompt, row, max_length) for prompt in task.prompts]
            out.append({**variants[p], "variants": variants})
        else:
            out.append(_lm_feature(task, tok, kind, task.prompts[p], row, max_length))
    return out


def _lm_feature(task: TaskSpec, tok, kind: str, prompt: Prompt, row: dict, max_length: int) -> dict:
    ids = _encode_prompt(tok, kind, task.render(prompt, row), max_length)
    if task.type in ("classification", "multiple_choice"):  # the target is the gold choice; T-Few needs all
        choice_ids = [_encode_target(tok, kind, a, max_length) for a in task.answers(prompt, row)]
        label = task.gold(row)
        feature = lm_example(kind, ids, list(choice_ids[label]))  # a copy: it may become `labels` itself
        feature.update(prompt_ids=ids, choice_ids=choice_ids, gold=label)
        return feature
    return lm_example(kind, ids, _encode_target(tok, kind, task.target_text(prompt, row), max_length))


def eval_features(task: TaskSpec, bundle, rows: list[dict], max_length: int, prompt: Prompt | None = None,
                  demos: list[dict] = (), header: str = "") -> EvalSet:
    """Inputs for evaluating `rows` under one template (with `demos` prepended, after `header`, for
    in-context learning and k-shot evaluation)."""
    tok, kind = bundle.tokenizer, bundle.kind
    if bundle.head == "classifier":
        feats = train_features(task, bundle, rows, max_length)
        return EvalSet([{"input_ids": f["input_ids"]} for f in feats], [f["labels"] for f in feats])
    prompt = prompt or task.prompts[0]
    demo_ids = demonstration_ids(task, tok, prompt, list(demos), header) if demos or header else []

    def encode(row):
        return {"input_ids": _encode_prompt(tok, kind, task.render(prompt, row), max_length, demo_ids)}

    if task.type in ("classification", "multiple_choice"):
        choices = [[_encode_target(tok, kind, a, max_length) for a in task.answers(prompt, r)] for r in rows]
        return EvalSet([encode(r) for r in rows], [task.gold(r) for r in rows], choices)
    groups: dict = {}
    for i, row in enumerate(rows):  # one example per group_by value, with all its references
        key = task.value(row, task.group_by) if task.group_by else i
        groups.setdefault(key, (row, []))[1].append(str(task.value(row, task.target)))
    return EvalSet([encode(r) for r, _ in groups.values()], [refs for _, refs in groups.values()])


def fixed_shot_features(task: TaskSpec, bundle, rows: list[dict], solved: list[dict], max_length: int,
                        prompt: Prompt | None = None) -> EvalSet:
    """A k-shot evaluation (task.demonstrations; MMLU's 5-shot protocol, Hendrycks et al. 2021): each row
    after its group's header and the first k solved rows of its group (its subject), in `solved`'s order:
    the same demonstrations for every method and seed. Rows keep their order."""
    spec = task.demonstrations
    pools: dict = {}
    for row in solved:
        pools.setdefault(task.value(row, spec["per"]), []).append(row)
    groups: dict = {}
    for i, row in enumerate(rows):
        groups.setdefault(task.value(row, spec["per"]), []).append(i)
    features, gold, choices = [None] * len(rows), [None] * len(rows), [None] * len(rows)
    for key, where in groups.items():
        if len(pools.get(key, [])) < spec["shots"]:
            raise ValueError(f"task '{task.name}': {len(pools.get(key, []))} solved rows for "
                             f"{spec['per']} {key!r}, {spec['shots']} needed")
        # group names such as MMLU's "abstract_algebra" read as words in the header
        header = spec["header"].format(**{spec["per"]: str(key).replace("_", " ")})
        part = eval_features(task, bundle, [rows[i] for i in where], max_length, prompt,
                             pools[key][: spec["shots"]], header)
        for j, i in enumerate(where):
            features[i], gold[i] = part.features[j], part.gold[j]
            choices[i] = part.choices[j] if part.choices is not None else None
    return EvalSet(features, gold, choices if rows and choices[0] is not None else None)
