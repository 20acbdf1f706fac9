"""Adapters trained elsewhere (or in an earlier run), evaluated like a cell: `external-adapter`.

An adapter folder is one of:
- this harness's own (what `run --save-adapters` writes for each trained cell): `peft_bench_adapter.json`
  (the method, its resolved config, the model, task and seed it was trained with) and `state.safetensors`
  (the method's stored state: the tensors that restore the fine-tuned model, task head included). The
  method is applied again and its state loaded, so in-house methods and compositions round-trip too.
  For peft-based methods the folder also holds peft's own `adapter_config.json` and
  `adapter_model.safetensors`, so peft users can load it without this harness.
- a peft adapter (a folder or a hub id with `adapter_config.json`): `peft.PeftModel.from_pretrained`.
  On a classification task its `modules_to_save` must hold the task head, or the scores would be a
  random head's.

Nothing trains: the model is evaluated as loaded (like zero-shot), and the record says `cell.source:
external`. The adapter's tensors keep `requires_grad` as their method sets it, so `params.trainable` and
`params.method` count the adapter as its training cell did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from bench.errors import BadInput, Unsupported
from bench.methods.base import Adapted, Method, register

HARNESS_FILE = "peft_bench_adapter.json"
STATE_FILE = "state.safetensors"
PEFT_FILE = "adapter_config.json"
FORMAT_VERSION = 1


def save_adapter(adapted: Adapted, cell, folder: Path) -> None:
    """Write a trained cell's adapter folder (see the module's docstring), replacing an older one."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory: each written from its own copy, on the CPU
    state = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in adapted.state_to_store().items()}
    save_file(state, str(folder / STATE_FILE))
    if hasattr(adapted.model, "peft_config"):  # a peft model: its own format beside ours
        adapted.model.save_pretrained(str(folder))
    meta = {"format_version": FORMAT_VERSION, "method": cell.method, "method_config": cell.method_config,
            "family": cell.family, "model": cell.model.name, "model_identity": cell.model.identity(),
            "task": cell.task.name, "seed": cell.seed, "suite": cell.suite, "cell_id": cell.id,
            "label": cell.label}
    (folder / HARNESS_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")


META_FIELDS = {"format_version": int, "method": str, "method_config": dict, "model": str, "task": str, "seed": int,
               "suite": str, "cell_id": str, "label": str}


def saved_state(folder: str | None, cell_id: str | None, device) -> dict:
    """The state the cell `cell_id` saved in `folder`; FileNotFoundError when it has not (it failed, or has not run)."""
    from safetensors.torch import load_file

    path = Path(folder or "") / STATE_FILE
    if not folder or not path.is_file():
        raise FileNotFoundError(f"cell {cell_id} has no saved state at {path}: it has not run, or it failed "
                                "(`peft-bench run` runs the cells others start from before them)")
    return load_file(str(path), device=str(device))


def read_meta(folder: Path) -> dict | None:
    """The harness's metadata of an adapter folder, None for a plain peft adapter; BadInput naming the file
    when it is not what `run --save-adapters` writes."""
    path = folder / HARNESS_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise BadInput(f"not a readable adapter description ({type(e).__name__}: {e})", str(path)) from None
    if not isinstance(meta, dict):
        raise BadInput(f"not an adapter description: a JSON {type(meta).__name__}, not an object", str(path))
    wrong = [f"{key} ({kind.__name__})" for key, kind in META_FIELDS.items()
             if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool)]
    if wrong:
        raise BadInput(f"not an adapter description `run --save-adapters` writes: missing or mistyped "
                       f"{', '.join(wrong)}", str(path))
    return meta


def peft_base_model(folder: Path) -> str | None:
    """The base model a peft adapter folder names (adapter_config.json's base_model_name_or_path), if any."""
    try:
        config = json.loads((folder / PEFT_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) and base else None


def fingerprint(source: str, where: str) -> str:
    """sha256 over an adapter folder's files (names and bytes), so a changed adapter makes a new cell; a hub
    id is fingerprinted by the commit the hub resolves now."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name in (
            HARNESS_FILE, STATE_FILE, PEFT_FILE, "adapter_model.safetensors", "adapter_model.bin"))
        if not files:
            raise BadInput(f"{folder} holds no adapter: expected {HARNESS_FILE} + {STATE_FILE} (this harness) "
                           f"or {PEFT_FILE} + adapter_model.safetensors (peft)", where)
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()
    if folder.exists() or source.count("/") != 1:
        raise BadInput(f"no adapter folder or hub id '{source}'", where)
    try:
        from huggingface_hub import HfApi

        return "hub:" + HfApi().model_info(source).sha
    except Exception as e:  # offline, unknown or private: say so before any work
        raise BadInput(f"cannot reach adapter '{source}' on the hub: {type(e).__name__}: {e}", where) from None


def _load(model, config, ctx):
    from bench import methods

    source = config["path"]
    if not source:
        raise Unsupported("external-adapter needs the adapter's path: `peft-bench eval --adapter PATH`, or "
                          "{name: external-adapter, overrides: {path: PATH}} in a suite")
    folder = Path(source).expanduser()
    meta = read_meta(folder) if folder.is_dir() else None
    if meta is not None:
        from safetensors.torch import load_file

        # nothing trains here: no method is refused for a training setting (prefix-tuning-peft under
        # gradient checkpointing evaluates, since transformers keeps the cache when no gradient is computed)
        evaluating = dataclasses.replace(ctx, train=dataclasses.replace(ctx.train, gradient_checkpointing=False))
        adapted = methods.for_cell(meta["method"]).apply(model, meta["method_config"], evaluating)
        adapted.model.to(ctx.device)
        adapted.load_state(load_file(str(folder / STATE_FILE), device=str(ctx.device)))
        return adapted
    return _load_peft(model, str(folder) if folder.is_dir() else source, ctx)


def _load_peft(model, source: str, ctx) -> Adapted:
    import peft

    from bench.methods.peft_common import merged
    from bench.methods.prompts import classify_at_last_token

    prompt = peft.PeftConfig.from_pretrained(source).is_prompt_learning
    # trainable, so counts are as its trainer saw them; peft loads soft prompts for inference only (refusing
    # is_trainable), as the table they produce: that table and the head copies are what trained
    wrapped = peft.PeftModel.from_pretrained(model, source, is_trainable=not prompt)
    if prompt:
        from peft.utils import ModulesToSaveWrapper

        wrapped.prompt_encoder.requires_grad_(True)
        for module in wrapped.modules():
            if isinstance(module, ModulesToSaveWrapper):
                module.modules_to_save.requires_grad_(True)
        classify_at_last_token(wrapped, ctx)
    saved = set(wrapped.peft_config["default"].modules_to_save or ())
    missing = [h for h in ctx.bundle.head_modules if h not in saved]
    if missing:
        raise Unsupported(f"the adapter at {source} has no task head ({', '.join(missing)}: peft's "
                          "modules_to_save), so a classification head would be scored untrained")
    return Adapted(wrapped, merge=(lambda: merged(wrapped)) if hasattr(wrapped, "merge_and_unload") else None)


register(
    Method("external-adapter", "external", "an adapter trained elsewhere (a peft folder or hub id, or a folder "
           "`run --save-adapters` wrote), evaluated as loaded", "–", _load,
           defaults={"path": "", "sha256": ""}, trains=False, external=True),
)
