"""A cell: one (method + config, model, task, seed, training config), as the grid resolved it.

Its id is a hash of the fully resolved configuration, so an unchanged cell keeps its id (and its
record) and any changed hyperparameter makes a new cell. Kept apart from the grid, so a process that
runs a cell (a fork-server child, a Ray worker) imports the cell, not the suite parser.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from bench.config import TrainConfig
from bench.fmt import setting_text
from bench.models import ModelSpec
from bench.tasks.spec import TaskSpec

ID_LENGTH = 12


@dataclass(frozen=True)
class Cell:
    id: str
    suite: str
    label: str  # the method's display name in this suite
    method: str  # registry name, or compose(a+b)
    family: str
    model: ModelSpec
    task: TaskSpec
    seed: int
    method_config: dict  # resolved settings ({"parts": [...]} for a composition)
    train: TrainConfig
    timeout_s: float
    data_dir: str | None
    method_modules: tuple[str, ...] = ()  # the suite's own method modules: a cell process imports them first
    threads: int = 1  # torch's intra-op threads in the cell process (recorded in env.threads)
    # where the trained adapter is written (run --save-adapters); like threads, not part of what is measured
    adapter_dir: str | None = None
    # the values of the settings its suite sweeps ({} when none): already in the config, here by name for the report
    sweep: dict = field(default_factory=dict)
    sweep_stage: int | None = None  # two-stage sweeps: 1 (choosing) or 2 (the chosen setting's further seeds)
    stage: str | None = None  # a pre-training stage's cell: the stage's name (bench/plan/stages.py)
    init_from: str | None = None  # the cell whose saved state this cell starts from (in its config and id)
    keeps_state: bool = False  # cells of another task start from its trained state (a task's `init_from`)
    init_dir: str | None = None  # where that state is (set by `run`, beside the results)
    # a target language -> the stage cell that trained its language adapter (in its config and id; their states
    # lie beside init_dir's): MAD-X scores each language with its own (bench/cell/languages.py)
    language_stages: dict[str, str] = field(default_factory=dict)
    curve_path: str | None = None  # where the cell writes its training curve (set by `run`; bench/cell/curves.py)
    # the stage cells whose saved states the method's settings name (Method.stage_settings; their ids are in the
    # method's config, so in this cell's id), and the folder of stage states (set by `run`, beside the results)
    stage_refs: tuple[str, ...] = ()
    stages_dir: str | None = None
    # a T-Few-objective cell as the plan prices it: its answer options' measured length (prompt_lengths.priced_length;
    # None: at the row's, an upper bound); not part of its config
    option_tokens: int | None = None

    @property
    def config(self) -> dict:
        """The fully resolved configuration; its hash is the id."""
        return cell_config(self.method, self.method_config, self.model.identity(), self.task.identity(), self.seed,
                           self.train.as_dict(), self.init_from, self.language_stages)

    def line(self) -> str:
        setting = f" [{setting_text(self.sweep)}]" if self.sweep else ""
        return (f"{self.id}  method={self.label}{setting} model={self.model.name} task={self.task.name} "
                f"seed={self.seed}")


def cell_config(method: str, method_config: dict, model_identity: dict, task_identity: dict, seed: int,
                train_settings: dict, init_from: str | None = None, language_stages: dict | None = None) -> dict:
    """A cell's configuration from its parts' identities (the grid computes each part once, not per cell);
    `init_from` (a stage cell's id) and `language_stages` only when set, so other cells keep their ids."""
    config = {"method": {"name": method, "config": method_config}, "model": model_identity, "task": task_identity,
              "seed": seed, "train": train_settings}
    if language_stages:
        config["language_stages"] = dict(sorted(language_stages.items()))
    return {**config, "init_from": init_from} if init_from else config


def cell_id(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]
