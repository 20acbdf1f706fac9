"""What the mask-based methods' fixture generators share (scripts/parity/gen_masks.py): the references' checkouts
at their pinned commits, compiling named classes and functions from their files, the models and base fixtures.

None of the references is a package, and none can be imported here whole, so each is read from a checkout at
its pinned commit (env var, else .cache/parity/<name>, cloned when missing) and the classes and functions named
are compiled from its files as they are (`compile_from`: the files' own imports, a fork of transformers 4.x or
`datasets`' removed load_metric, would fail beside transformers 4.57.6).
"""

from __future__ import annotations

import __future__
import ast
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from transformers import BertConfig, BertForSequenceClassification, RobertaConfig  # noqa: E402
from transformers import RobertaForSequenceClassification  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# name -> (env var naming a checkout, repository, pinned commit)
REFERENCES = {
    "propetl": ("PARITY_PROPETL_DIR", "https://github.com/ChaosCodes/ProPETL",
                "1c08f19cea90cc3e39bba2b0f7c9c5587fa1da09"),
    "fish": ("PARITY_FISH_DIR", "https://github.com/varunnair18/FISH", "b5bff1e66559f7c865e2f45c1488ae13e193dae2"),
    "childtuning": ("PARITY_CHILDTUNING_DIR", "https://github.com/PKUnlp-icler/ChildTuning",
                    "dff3888b890339bf37e1a676b43f35b4667fb295"),
}
SEED = 0
DIMS = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
            initializer_range=0.1, num_labels=2)
ARCHS = {
    "roberta": (RobertaConfig, RobertaForSequenceClassification,
                dict(max_position_embeddings=20, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    # smaller: the Fisher fixtures store a score per entry of the model
    "bert": (BertConfig, BertForSequenceClassification,
             dict(max_position_embeddings=16, pad_token_id=0, hidden_size=16, intermediate_size=32)),
}


def reference_file(name: str, relative: str) -> Path:
    """A file of the reference's checkout, which must be at the pinned commit with that file unchanged."""
    env, url, commit = REFERENCES[name]
    path = Path(os.environ.get(env) or ROOT / ".cache" / "parity" / name)
    if not path.is_dir():
        subprocess.run(["git", "clone", "--quiet", url, str(path)], check=True)
        subprocess.run(["git", "-C", str(path), "checkout", "--quiet", commit], check=True)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "-C", str(path), "diff", "--quiet", "HEAD", "--", relative]).returncode
    if head != commit or changed:
        sys.exit(f"gen_masks: {path} must be {url} at {commit} with {relative} unchanged (HEAD {head})")
    return path / relative


def compile_from(path: Path, names: list[str], namespace: dict) -> dict:
    """Defines in `namespace` the named top-level classes and functions of a reference file, compiled from its
    text; `Class.method` defines that method as a plain function (called with a stand-in `self`)."""
    top = {n.name: n for n in ast.parse(path.read_text(), str(path)).body
           if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    nodes = []
    for name in names:
        owner, _, method = name.partition(".")
        node = top[owner]
        nodes.append(next(n for n in node.body if getattr(n, "name", None) == method) if method else node)
    code = compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)
    return namespace


def build_model(arch: str) -> nn.Module:
    config_class, model_class, extra = ARCHS[arch]
    torch.manual_seed(SEED)
    return model_class(config_class(**{**DIMS, **extra}, attn_implementation="eager")).eval()


def meta_of(arch: str, name: str, commit_of: str) -> dict:
    config_class, model_class, extra = ARCHS[arch]
    env, url, commit = REFERENCES[commit_of]
    return {"reference": f"{url} at {commit}", "commit": commit, "arch": arch, "model_class": model_class.__name__,
            "config_class": config_class.__name__, "config": {**DIMS, **extra}, "base": name}


def save_base(name: str, arch: str, model: nn.Module, inputs: dict, commit_of: str) -> None:
    with torch.no_grad():
        logits = model(**inputs).logits
    save(name, {**{f"base.{k}": v for k, v in model.state_dict().items()},
                **{f"input.{k}": v for k, v in inputs.items()}, "logits_base": logits},
         meta_of(arch, name, commit_of))

