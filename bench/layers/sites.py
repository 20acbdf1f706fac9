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
  (BERT's `output` module receives (intermediate, attention_output); elsewhere the FFN block itself);
- ffn_norm (post-LN models) or ffn_block (pre-LN): where the FFN block's output is complete, residual added:
  the layer norm that follows the residual add (BERT's `output.LayerNorm`), or the module whose output is the
  residual stream after the FFN's add (T5's FF layer, GPT-2's and LLaMA's decoder layer). Each architecture
  declares one of the two; AdapterHub's default sequential adapter (Pfeiffer et al.) reads it.
"""

from __future__ import annotations

import functools
import os
import re

import torch
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
    """Output width of a Linear, of peft's layer wrapping one (whose weight may be 4-bit packed, ((n + 1) // 2, 1),
    no width), or of transformers' Conv1D (GPT-2 stores its weight transposed)."""
    if hasattr(module, "out_features"):
        return module.out_features
    return module.weight.shape[-1]


def in_features(module: nn.Module) -> int:
    """Input width of a Linear, of peft's layer wrapping one, or of transformers' Conv1D."""
    if hasattr(module, "in_features"):
        return module.in_features
    return module.weight.shape[0]


def place_like(new: nn.Module, module: nn.Module) -> nn.Module:
    """`new` on `module`'s device in its weights' dtype. A 4-bit layer's packed weight (uint8) is no dtype to compute
    in: then its first floating-point parameter's (peft's LoRA factors on QLoRA's layers), else fp32, what peft's
    kbit preparation casts the model's other parameters to."""
    weight = next(module.parameters())
    floating = (p.dtype for p in module.parameters() if p.is_floating_point())
    return new.to(device=weight.device, dtype=next(floating, torch.float32))


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


def _renormalise(name: str, module, args, output):
    """Post-LN, after the norm: the branch reads LN(s), s = h + x the norm's input, and the sum passes the same
    norm again, LN(s + branch(LN(s))). `forward` runs the norm without its hooks, so this one runs once."""
    return module.forward(args[0] + getattr(module, name)(output))


def _add_to_stream(name: str, module, args, output):
    """Pre-LN, after the block: the branch reads the residual stream s = h + x and adds to it, s + branch(s)."""
    if isinstance(output, tuple):  # a decoder layer that also returns attention weights or a cache
        return (output[0] + getattr(module, name)(output[0]),) + output[1:]
    return output + getattr(module, name)(output)


def _renormalise_stack(name: str, module, args, output):
    """Post-LN, a stack of branches in order (AdapterHub's Stack): each reads the layer-normed stream the one before
    left, s' = s + branch(LN(s)), and the block returns LN of the last stream (one branch: `_renormalise`)."""
    stream, normed = args[0], output
    for branch in getattr(module, name).values():
        stream = stream + branch(normed)
        normed = module.forward(stream)
    return normed


def _closest(name: str, candidates: list[tuple[str, nn.Module]]) -> tuple[str, nn.Module]:
    """The candidate whose dotted name shares the most leading parts with `name` (the same layer's module)."""
    return max(candidates, key=lambda c: len(os.path.commonprefix([name.split("."), c[0].split(".")])))


def attach_after_ffn_block(model: nn.Module, arch: str, name: str, make_branch, stack: bool = False) -> None:
    """A branch `make_branch(width)` per layer at the FFN block's complete output (ffn_norm or ffn_block site):
    post-LN it reads the layer-normed sum and the norm is applied again to the sum plus its output; pre-LN it
    reads the residual stream after the FFN's add and adds to it. The branch is a child of the layer's FFN output
    projection (the module the sequential placement hooks), so its parameters have the same names in both.
    `stack` (post-LN models): the branch is an nn.ModuleDict of branches applied in its order, each on the stream
    the one before left (bench/methods/madx.py's language adapter, then the task adapter)."""
    post_ln = "ffn_norm" in (ARCHS[arch].sites if arch in ARCHS else {})
    if stack and not post_ln:
        raise Unsupported(f"a stack of adapters is placed on post-LN models (BERT, RoBERTa) only, not {arch}")
    blocks = find(model, arch, "ffn_norm" if post_ln else "ffn_block")
    projections = find(model, arch, "ffn_output")
    paired = {block_name: _closest(block_name, projections) for block_name, _ in blocks}
    if len({n for n, _ in paired.values()}) != len(projections) or len(blocks) != len(projections):
        raise Unsupported(f"the {arch} model's FFN blocks ({len(blocks)}) do not pair with its FFN output "
                          f"projections ({len(projections)})")
    for block_name, block in blocks:
        _, projection = paired[block_name]
        branch = place_like(make_branch(out_features(projection)), projection)
        projection.add_module(name, branch)
        # the block holds a reference (not a child) so the branch appears once in state dicts
        object.__setattr__(block, name, branch)
        hook = _renormalise_stack if stack else _renormalise if post_ln else _add_to_stream
        block.register_forward_hook(functools.partial(hook, name))


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
