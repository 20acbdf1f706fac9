"""Where in-house methods attach, per architecture, and how they attach: forward hooks.

Hooks leave every pretrained weight under its own name (state dicts, merging and peft keep
working); the added modules are registered as children of the module they hook, so they belong to
the model's parameters, move with `.to()`, and appear once in its state dict.

Sites (regular expressions searched against full module names), declared per architecture in
bench/archs.py (`ArchSpec.sites`):
- self_attention: the self-attention module (prefixes are injected there);
- cross_attention: an encoder-decoder's decoder attention over the encoder output (prefixed too);
  only architectures that have one declare it;
- attention_output: the attention block's output projection (Houlsby's first adapter);
- ffn_output: the feed-forward block's output projection (before dropout, residual and norm);
- ffn_input: the module whose positional argument `ffn_input_arg` is the feed-forward block's input
  (BERT's `output` module receives (intermediate, attention_output); elsewhere the FFN block itself).
"""

from __future__ import annotations

import functools
import re

from torch import nn

from bench.archs import ARCHS
from bench.errors import Unsupported


def find(model: nn.Module, arch: str, site: str) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module at `site`, in model order; Unsupported when there are none."""
    declared = ARCHS[arch].sites if arch in ARCHS else {}
    if site not in declared:
        raise Unsupported(f"no {site} site is declared for architecture '{arch}'")
    pattern = re.compile(declared[site])
    found = [(n, m) for n, m in model.named_modules() if pattern.search(n)]
    if not found:
        raise Unsupported(f"no module matches the {site} site ({declared[site]}) in this {arch} model")
    return found


def out_features(module: nn.Module) -> int:
    """Output width of a Linear or transformers' Conv1D (GPT-2 stores its weight transposed)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.weight.shape[-1]


def in_features(module: nn.Module) -> int:
    """Input width of a Linear or transformers' Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.weight.shape[0]


def place_like(new: nn.Module, module: nn.Module) -> nn.Module:
    weight = next(module.parameters())
    return new.to(device=weight.device, dtype=weight.dtype)


def _add_output(name: str, module, args, output):
    """Sequential: the added module maps the output to a correction of it."""
    return output + getattr(module, name)(output)


def _add_from_input(name: str, module, args, output):
    """Beside: the added module maps the hooked module's own input to a correction of its output."""
    return output + getattr(module, name)(args[0])


def _stash_input(name: str, index: int, module, args, kwargs):
    getattr(module, name).stash = args[index] if len(args) > index else next(iter(kwargs.values()))


def _add_from_stash(name: str, module, args, output):
    """Parallel: the added module maps the stashed block input to a correction of the output."""
    branch = getattr(module, name)
    x = branch.stash
    branch.stash = None
    return output + branch(x)


def attach_sequential(model: nn.Module, arch: str, positions, name: str, make_branch) -> None:
    """A branch `make_branch(output width)` after every module at each of `positions`, in model order."""
    for position in positions:
        for _, module in find(model, arch, position):
            module.add_module(name, place_like(make_branch(out_features(module)), module))
            module.register_forward_hook(functools.partial(_add_output, name))


def attach_beside(module: nn.Module, name: str, branch: nn.Module) -> None:
    """`branch` reads the module's input and adds to its output (a LoRA-like bypass)."""
    module.add_module(name, place_like(branch, module))
    module.register_forward_hook(functools.partial(_add_from_input, name))


def attach_parallel(model: nn.Module, arch: str, name: str, make_branch) -> None:
    """A branch per layer from the FFN block's input to its output projection's output."""
    inputs = find(model, arch, "ffn_input")
    index = ARCHS[arch].sites["ffn_input_arg"]
    for out_name, out_module in find(model, arch, "ffn_output"):
        _, in_module = max(((n, m) for n, m in inputs if out_name.startswith(n + ".")), key=lambda x: len(x[0]))
        branch = place_like(make_branch(out_features(out_module)), out_module)
        branch.stash = None
        out_module.add_module(name, branch)
        # the input module holds a reference (not a child) so the branch appears once in state dicts
        object.__setattr__(in_module, name, branch)
        in_module.register_forward_pre_hook(functools.partial(_stash_input, name, index), with_kwargs=True)
        out_module.register_forward_hook(functools.partial(_add_from_stash, name))
