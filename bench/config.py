"""The training configuration of a cell, and the type checks shared by every YAML mapping.

Training settings are resolved in layers, most general first: these defaults, the method's
recommended settings (registry), the suite's `train:`, the task entry's `train:`, then the method
entry's `train:`.
A layer that sets `max_steps` clears `epochs` from the layers below it, and vice versa.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench import optimizers
from bench.errors import BadInput, did_you_mean

PRECISIONS = ("auto", "fp32", "bf16")
# The dtype a model's weights are loaded in: auto = the checkpoint's own (a tiny or config-built model: its
# config's, else fp32), as users of large checkpoints load them (bench.models.load_bundle).
WEIGHTS_DTYPES = ("auto", "bf16", "fp16", "fp32")
# The attention kernels a model runs (transformers' attn_implementation): auto = transformers' choice for the
# architecture (sdpa wherever the model has it), sdpa = torch's scaled_dot_product_attention (flash and
# memory-efficient kernels where the inputs allow, which keep no L x L probabilities), eager = the model's own
# matmul-softmax.
ATTENTIONS = ("auto", "sdpa", "eager")
OPTIMIZERS = tuple(optimizers.OPTIMIZERS)
# The kernels a LLaMA-family model's elementwise layers run (docs/performance.md, "Speed options"): torch = the
# model's own; liger = Liger's fused RMSNorm, SwiGLU, rotary and (causal LMs) linear cross-entropy kernels
# (bench/cell/kernels.py; CUDA only).
KERNELS = ("torch", "liger")
OBJECTIVES = ("lm", "tfew", "head")  # see bench/cell/objectives.py; `head` is resolved, not chosen
POOLINGS = ("auto", "cls", "mean", "last")  # auto: the model's convention (bench.models.ModelSpec.pooling)

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 16
    max_steps: int | None = 300  # optimizer steps; exclusive with `epochs`
    epochs: float | None = None
    max_length: int = 128  # tokens per input after truncation
    warmup_ratio: float = 0.06  # fraction of total steps with linearly rising learning rate
    weight_decay: float = 0.0  # AdamW decay, never applied to biases and norm weights
    max_grad_norm: float | None = 1.0  # gradient clipping; null disables it
    eval_batch_size: int = 64
    eval_every: int | None = None  # steps between evaluations; null = only after training
    # with eval_every: restore the weights that scored best on the selection split (never the reported one)
    keep_best: bool = False
    max_train_samples: int | None = None  # a random subset drawn with the seed (same for every method)
    max_eval_samples: int | None = None  # the first N evaluation rows
    shots: int | None = None  # few-shot: train on k examples drawn with the seed (same for every method)
    objective: str = "lm"  # lm, or tfew (L_LM + L_UL + L_LN) for tasks with answer options
    # tfew's details (bench/cell/objectives.py: tfew_terms): L_LM over `examples` (each one's mean log-probability,
    # then their mean) or over `tokens` (every gold token of the batch at once: T-Few's), and the offset inside
    # L_UL's log(1 - p + offset) (T-Few's: 0.01)
    tfew_lm: str = "examples"
    unlikelihood_offset: float = 0.0
    unlikelihood: bool = True  # false: L_LM + L_LN only (T-Few's prompt tuning: `unlikely_loss: 0`)
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    weights_dtype: str = "auto"  # see WEIGHTS_DTYPES; train.weights_dtype records what was loaded
    # Batches drawn with replacement, each example weighted by 1 / its class's count (T-Few's sampler);
    # classification and multiple-choice tasks only.
    balanced_batches: bool = False
    # Every drawn example under a template drawn afresh each step (T-Few), instead of one fixed per row.
    redraw_templates: bool = False
    optimizer: str = "adamw"  # a name in bench/optimizers.py
    # Speed options (docs/performance.md). They change what is measured (memory, time; compile and
    # checkpointing may move the last bits of the losses), so they are part of the cell.
    gradient_checkpointing: bool = False  # recompute layers' activations in backward instead of keeping them
    compile: bool = False  # torch.compile the adapted model before training (the probe runs uncompiled)
    group_by_length: bool = False  # batches of similar lengths (less padding), as HF's group_by_length
    attention: str = "auto"  # see ATTENTIONS; train.attention records what the model ran
    kernels: str = "torch"  # see KERNELS
    # How a classification head reads the sequence; `auto` resolves per model in the grid (cls, mean for
    # sentence-embedding encoders, last for decoders' heads), so a cell records what it used.
    pooling: str = "auto"
    # The selection split (the suite's `selection:`, bench/plan/suite.py), which chooses sweep settings and
    # keep_best checkpoints and is never reported: a stratified slice of the training rows held out with the
    # cell's seed (`selection_heldout`, a fraction), or a split of the task's own (`selection_split`).
    selection_heldout: float | None = None
    selection_split: str | None = None
    # The model's LM loss on general text before and after training (forgetting.* in bench/figures.py): the
    # packaged text, or the UTF-8 file `forgetting_text` names (in a suite: from the suite file's folder).
    forgetting: bool = False
    forgetting_text: str | None = None

    def steps_for(self, n_examples: int) -> int:
        """Optimizer steps a cell trains for on `n_examples` rows: max_steps, else enough for `epochs` passes."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))

    def as_dict(self) -> dict[str, Any]:
        """The settings as the cell id hashes them. A setting added after cells were first recorded is
        left out while at the value that behaves as before, so upgrading keeps every recorded cell's id."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ADDED_LATER or ADDED_LATER[k] != v}


# setting -> the value it is left out of the id at
ADDED_LATER = {"weights_dtype": "auto", "balanced_batches": False, "redraw_templates": False,
               "gradient_checkpointing": False, "compile": False, "group_by_length": False, "attention": "auto",
               "tfew_lm": "examples", "unlikelihood_offset": 0.0, "unlikelihood": True, "selection_heldout": None,
               "selection_split": None, "forgetting": False, "forgetting_text": None, "kernels": "torch"}


# the protocol's two settings come from the suite's `selection:` (one protocol for every method), never a `train:`
SELECTION_FIELDS = ("selection_heldout", "selection_split")
TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in SELECTION_FIELDS}
_TRAIN_TYPES = {
    "lr": float, "batch_size": int, "max_steps": (int, None), "epochs": (float, None),
    "max_length": int, "warmup_ratio": float, "weight_decay": float, "max_grad_norm": (float, None),
    "eval_batch_size": int, "eval_every": (int, None), "keep_best": bool,
    "max_train_samples": (int, None), "max_eval_samples": (int, None), "balanced_batches": bool,
    "redraw_templates": bool, "gradient_checkpointing": bool, "compile": bool, "group_by_length": bool,
    "precision": PRECISIONS, "weights_dtype": WEIGHTS_DTYPES, "attention": ATTENTIONS, "optimizer": OPTIMIZERS,
    "kernels": KERNELS,
    "shots": (int, None),
    "objective": ("lm", "tfew"), "tfew_lm": ("examples", "tokens"), "unlikelihood_offset": float,
    "unlikelihood": bool,
    "pooling": POOLINGS,
    "forgetting": bool, "forgetting_text": (str, None),
}
_POSITIVE = {"lr", "batch_size", "max_steps", "epochs", "max_length", "eval_batch_size", "eval_every",
             "max_train_samples", "max_eval_samples", "max_grad_norm", "shots"}
_EXCLUSIVE = {"max_steps": "epochs", "epochs": "max_steps"}
_NON_NEGATIVE = {"weight_decay"}
MAX_THREADS = 4096  # torch threads per cell: past any machine's cores, a typo that would start a million threads
# Upper bounds that catch typos before a cell allocates for them (a batch of 10^11 rows grew one cell
# to 20 GB before the kernel killed it); each is far beyond any real setting.
_LIMITS = {"batch_size": 2 ** 16, "eval_batch_size": 2 ** 16, "max_length": 2 ** 20, "shots": 2 ** 20,
           "max_steps": 10 ** 9, "epochs": 10 ** 4}


def resolve_train(layers: list[tuple[dict[str, Any], Callable[[str], str]]],
                  selection: dict[str, Any] | None = None) -> TrainConfig:
    """Merge override layers (each a mapping and a function giving the location of a key); `selection`: the
    suite's selection protocol as TrainConfig fields (bench/plan/suite.py checked it)."""
    values = {**TrainConfig().as_dict(), **(selection or {})}
    for mapping, where in layers:
        check_keys(mapping, TRAIN_FIELDS, "training setting", where)
        if isinstance(mapping.get("max_steps"), (int, float)) and isinstance(mapping.get("epochs"), (int, float)):
            raise BadInput("'max_steps' and 'epochs' are both given here: training runs for one of them (give "
                           "one; a later layer, e.g. a task's train, replaces the other)", where("epochs"))
        for key, raw in mapping.items():
            value = coerce(raw, _TRAIN_TYPES[key], where(key), key)
            if key in _POSITIVE and value is not None and value <= 0:
                raise BadInput(f"'{key}' must be positive, got {raw!r}", where(key))
            if key in _LIMITS and value is not None and value > _LIMITS[key]:
                raise BadInput(f"'{key}' = {raw!r} is beyond {_LIMITS[key]:,}: a typo?", where(key))
            if key in _NON_NEGATIVE and value is not None and value < 0:
                raise BadInput(f"'{key}' must not be negative, got {raw!r}", where(key))
            if key in ("warmup_ratio", "unlikelihood_offset") and not 0 <= value < 1:
                raise BadInput(f"'{key}' must be in [0, 1), got {raw!r}", where(key))
            values[key] = value
            if key in _EXCLUSIVE and value is not None:
                values[_EXCLUSIVE[key]] = None
    if values.get("group_by_length") and values.get("balanced_batches"):
        raise BadInput("'group_by_length' orders a uniform draw; 'balanced_batches' draws by class: choose one",
                       layers[-1][1]("group_by_length") if layers else None)
    if values["keep_best"] and not values["eval_every"]:
        raise BadInput("'keep_best' needs 'eval_every' (evaluations to choose the best from)",
                       layers[-1][1]("keep_best") if layers else None)
    if values["keep_best"] and values.get("selection_heldout") is None and values.get("selection_split") is None:
        raise BadInput("'keep_best' chooses a checkpoint by its score, and without a selection split that score "
                       "would be the reported split's: selection on the test data. Give the suite a "
                       "`selection:` ({heldout: 0.1}, or {split: <a split of the task's own>})",
                       _where_key(layers, "keep_best"))
    if values.get("forgetting_text") is not None:
        if not values.get("forgetting"):
            raise BadInput("'forgetting_text' is the text 'forgetting' measures the loss on: set 'forgetting: true'",
                           _where_key(layers, "forgetting_text"))
        check_forgetting_text(values["forgetting_text"], _where_key(layers, "forgetting_text"))
    if values["max_steps"] is None and values["epochs"] is None:
        raise BadInput("training needs 'max_steps' or 'epochs'", layers[-1][1]("max_steps") if layers else None)
    return TrainConfig(**values)


def check_forgetting_text(path: str, where: str | None) -> None:
    """A readable UTF-8 file with some text in it, checked as the suite is planned, before any cell runs."""
    problem = _forgetting_text_problem(path)
    if problem:
        raise BadInput(f"'forgetting_text': {problem}", where)


@functools.lru_cache(maxsize=16)
def _forgetting_text_problem(path: str) -> str | None:
    """Why `path` cannot be the forgetting text (None: it can); read once per planning, not once per cell."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read {path!r} as UTF-8 text ({e})"
    return None if text.strip() else f"{path!r} holds no text"


def _where_key(layers, key: str) -> str | None:
    """The location of the last layer that sets `key` (the first layer's when none does)."""
    for mapping, where in reversed(layers):
        if key in mapping:
            return where(key)
    return layers[0][1](key) if layers else None


def check_keys(mapping: Any, allowed, what: str, where: Callable[[str], str], required=()) -> None:
    if not isinstance(mapping, dict):
        raise BadInput(f"expected a mapping of {what}s, got {type(mapping).__name__}", where(""))
    for key in mapping:
        if key not in allowed:
            raise BadInput(f"unknown {what} '{key}'{did_you_mean(str(key), map(str, allowed))}",
                           where(key), map(str, allowed))
    for key in required:
        if key not in mapping:
            raise BadInput(f"missing required {what} '{key}'", where(""))


def coerce(value: Any, spec: Any, where: str, key: str) -> Any:
    """Check `value` against `spec`: a type, a tuple of types (None allowed) or a tuple of choices.

    YAML 1.1 reads `5e-4` as a string, so numeric strings are accepted for float settings.
    """
    specs = spec if isinstance(spec, tuple) else (spec,)
    if all(isinstance(s, str) for s in specs):  # a set of choices
        if value in specs:
            return value
        raise BadInput(f"'{key}' must be one of {', '.join(specs)}, got {value!r}", where, specs)
    if value is None and None in specs:
        return None
    for s in specs:
        if s is bool and isinstance(value, bool):
            return value
        if s is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if s is float and not isinstance(value, bool):
            number = float(value) if isinstance(value, (int, float)) else \
                float(value) if isinstance(value, str) and _FLOAT_RE.match(value.strip()) else None
            if number is not None:
                if not math.isfinite(number):  # a NaN slips past every comparison that guards a setting
                    raise BadInput(f"'{key}' must be a finite number, got {value!r}", where)
                return number
        if s is str and isinstance(value, str):
            return value
        if s is list and isinstance(value, list):
            return value
        if s is dict and isinstance(value, dict):
            return value
    names = " or ".join("null" if s is None else s.__name__ for s in specs)
    raise BadInput(f"'{key}' must be {names}, got {value!r}", where)
