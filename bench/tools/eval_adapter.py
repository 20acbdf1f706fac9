"""`peft-bench eval --adapter`: an adapter trained elsewhere, evaluated as a suite evaluates its cells.

The adapter becomes one cell of the suite (method `external-adapter`, bench/methods/external.py) with
the suite's settings for that task (evaluation batch, lengths, precision, data), run in its own process
like every cell, and its record lands beside the suite's records: the report puts it in the same
tables as the methods trained here. Its cell id hashes the adapter's files, so a changed adapter at the
same path is a new cell. A folder `run --save-adapters` wrote knows its model, task, seed and suite;
for a peft folder or hub id, say them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.errors import BadInput
from bench.methods.external import fingerprint, peft_base_model, read_meta
from bench.plan.suite import MethodEntry


def _same_base(folder: Path, meta: dict, model: str) -> None:
    """BadInput naming both when the adapter was trained on another base model than the one it would be
    evaluated on: its weights would be read into a model they were not trained for."""
    from bench.models import REGISTRY

    trained_on = meta.get("model") if meta else peft_base_model(folder) if folder.is_dir() else None
    if trained_on is None:
        return
    spec = REGISTRY.get(model)
    names = {model, model.split("/")[-1], *([spec.ref, spec.ref.split("/")[-1]] if spec is not None else [])}
    if trained_on not in names and trained_on.split("/")[-1] not in names:
        raise BadInput(f"the adapter was trained on '{trained_on}', not on '{model}': evaluate it on its own base "
                       "model (or leave --model out)", "--model")


def adapter_cells(adapter: str, suite_name: str | None, model: str | None, task: str | None, seed: int | None,
                  label: str | None, data_dir: str | None, threads: int | None):
    """(suite, [the adapter's cell]): every choice checked before any work."""
    from bench.plan import grid
    from bench.plan.suite import load_suite

    digest = fingerprint(adapter, "--adapter")
    folder = Path(adapter).expanduser()
    meta = (read_meta(folder) if folder.is_dir() else None) or {}
    chosen = {"--suite": suite_name or meta.get("suite"), "--model": model or meta.get("model"),
              "--task": task or meta.get("task")}
    missing = [flag for flag, value in chosen.items() if value is None]
    if missing:
        raise BadInput(f"say {', '.join(missing)}: a peft adapter does not record what it was trained on "
                       f"(a folder `run --save-adapters` wrote does)", missing[0])
    _same_base(folder, meta, chosen["--model"])
    try:
        suite = load_suite(chosen["--suite"], data_dir)
    except BadInput as e:
        if suite_name is None:  # the saved name: its YAML may live elsewhere
            e.message += f" (the adapter was trained in suite '{chosen['--suite']}': pass --suite with its YAML file)"
        raise
    label = label or (f"{meta['label']} ({meta['cell_id']})" if meta else folder.name if folder.is_dir() else adapter)
    if label in {m.label for m in suite.methods}:
        raise BadInput(f"label '{label}' is a method of suite '{suite.name}': its records would be averaged with "
                       "the adapter's; give another with --label", "--label")
    source = str(folder.resolve()) if folder.is_dir() else adapter
    entry = MethodEntry(label=label, name="external-adapter", overrides={"path": source, "sha256": digest},
                        where=lambda *k: "--adapter")
    only_seed = [seed if seed is not None else meta.get("seed", suite.seeds[0])]
    cells = grid.expand(dataclasses.replace(suite, methods=[entry], exclude=[]), None, [chosen["--model"]],
                        [chosen["--task"]], only_seed, threads)
    return suite, cells
