"""What every fixture generator shares: where fixtures go and how one is written.

Generators run in .venv-parity (`make parity`), beside the reference implementation and with exactly its pins,
never in the project's environment. A fixture is two files in tests/fixtures/parity/: `<name>.safetensors`
(base weights, the reference's method weights at init and after its optimisation steps, inputs, outputs, loss,
gradients) and `<name>.json` (which reference at which version or commit, the pins it ran under, the config, the
name map from its parameter names to ours, and anything else a parity test needs to rebuild the same model).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity"
PINNED = ("torch", "transformers", "adapters", "safetensors", "numpy")


def pins() -> dict[str, str]:
    """The versions the reference ran under, as installed in .venv-parity."""
    found = {}
    for name in PINNED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), **found}


def save(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Writes one fixture; tensors are stored contiguous, fp32 unless they are integer inputs."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    stored = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().cpu()
              for k, v in tensors.items()}
    path = FIXTURES / f"{name}.safetensors"
    save_file(stored, str(path))
    (FIXTURES / f"{name}.json").write_text(json.dumps({**meta, "pins": pins()}, indent=1, sort_keys=True) + "\n")
    return path


def reference_checkout(env: str, repo: str, commit: str, paths: list[str], marker: str) -> Path:
    """A directory holding `paths` of a reference implementation's repository at `commit`: PARITY_<env>_DIR names
    a checkout; else one is made (once) in .cache/parity/ from PARITY_<env>_MIRROR (a git dir holding the commit)
    or by cloning `repo`. `marker`, a file under it, says an earlier checkout is complete."""
    given = os.environ.get(f"PARITY_{env}_DIR")
    if given:
        return Path(given)
    name = repo.rstrip("/").rsplit("/", 1)[1]
    target = Path(__file__).resolve().parents[2] / ".cache" / "parity" / f"{name}-{commit[:12]}"
    if (target / marker).is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    mirror = os.environ.get(f"PARITY_{env}_MIRROR")
    if mirror:
        archive = subprocess.run(["git", f"--git-dir={mirror}", "archive", commit, *paths],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    else:
        subprocess.run(["git", "clone", "--quiet", repo, str(target)], check=True)
        subprocess.run(["git", "-C", str(target), "checkout", "--quiet", commit], check=True)
    return target
