"""MAD-X (Pfeiffer et al. 2020): a language adapter and a task adapter stacked, language adapters swapped per language.

Per layer, at the FFN block's complete output (where adapter-pfeiffer sits: AdapterHub's SeqBnConfig), two
bottlenecks in turn (AdapterHub's `Stack(language, task)`): s1 = s + language(LN(s)), s2 = s1 + task(LN(s1)),
the block returning LN(s2) (encoders only: MAD-X's are post-LN); and, with
`invertible`, the language's invertible adapter on the embeddings (bench/layers/invertible.py; AdapterHub's
SeqBnInvConfig). The language parts are MAD-X's defaults (reduction factor 2 for the language adapter and for the
invertible adapter's subnets); the task adapter is adapter-pfeiffer's (16), ReLU throughout.

On a masked-LM stage (a stage with `objective: mlm` on a language's text, bench/plan/stages.py) the language
parts train and the task adapter stays out of the way (its up projection at zero, frozen): that is how a language's
adapters are made. Every other cell trains the task adapter (and the task head) with the language parts frozen,
started from such a stage with `init_from`; they are stored with it (the trained model is not rebuilt without
them) and `language_state` / `load_language` take them out and put another language's in: MAD-X's zero-shot
transfer swaps the target language's adapters in at test time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.archs import ARCHS
from bench.methods.base import Adapted, Method, freeze, load_by_name, register, train_head, trainable_state
from bench.tasks.masked_lm import MLM

if TYPE_CHECKING:
    import torch
    from torch import nn

STACK = "madx"  # the per-layer nn.ModuleDict: {language, task}
INVERTIBLE = "invertible_adapter"
LANGUAGE, TASK = "language", "task"


def is_language_part(name: str) -> bool:
    """A parameter of the language adapter or of the invertible adapter (the parts one language owns)."""
    return f".{STACK}.{LANGUAGE}." in name or f"{INVERTIBLE}." in name


def language_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The language adapter's and invertible adapter's tensors by parameter name."""
    return {n: p.detach() for n, p in model.named_parameters() if is_language_part(n)}


def load_language(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a language's adapters (`language_state` of a model trained in it) into this model: exactly the language
    parts, each of them, or ValueError."""
    expected = set(language_state(model))
    if set(state) != expected:
        raise ValueError(f"a language state holds the language adapter and invertible adapter: missing "
                         f"{sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}")
    load_by_name(model, state)


def _madx(model, config, ctx):
    from torch import nn

    from bench.layers.bottleneck import Bottleneck, bottleneck_width
    from bench.layers.invertible import attach_invertible
    from bench.layers.sites import attach_after_ffn_block

    freeze(model)
    language = {"reduction_factor": config["language_reduction_factor"], "bottleneck_dim": 0}
    attach_after_ffn_block(model, ctx.bundle.arch, STACK, lambda dim: nn.ModuleDict({
        LANGUAGE: Bottleneck(dim, bottleneck_width(dim, language), config["activation"]),
        TASK: Bottleneck(dim, bottleneck_width(dim, config), config["activation"])}), stack=True)
    if config["invertible"]:
        attach_invertible(model, INVERTIBLE, config["invertible_reduction_factor"], config["activation"])
    language_stage = ctx.task is not None and ctx.task.type == MLM
    for name, p in model.named_parameters():  # the new modules' parameters are created trainable
        if f".{STACK}." in name or f"{INVERTIBLE}." in name:
            p.requires_grad_(is_language_part(name) == language_stage)
    if not language_stage:
        train_head(model, ctx)
    return Adapted(model, stored_state=lambda: {**language_state(model), **trainable_state(model)},
                   load_stored=lambda state: load_by_name(model, state))


_madx.swaps_languages = True  # a suite entry may name language_stages (bench/plan/stages.check_language_stages)


register(
    Method("madx", "additive", "a frozen language adapter (with an invertible adapter on the embeddings) and a "
           "task adapter stacked after each FFN block; the task adapter trains",
           "Pfeiffer et al. 2020, MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer", _madx,
           defaults={"reduction_factor": 16, "bottleneck_dim": 0, "language_reduction_factor": 2,
                     "invertible": True, "invertible_reduction_factor": 2, "activation": "relu"},
           train={"lr": 1e-4},
           # MAD-X and AdapterHub's placement of the invertible adapter (on the embeddings module's output, under
           # the tied MLM head) are an encoder's; AdapterHub puts it elsewhere on T5 (its encoder only) and GPT-2
           # (after the position embeddings), which this build does not follow
           unsupported={a.name: f"MAD-X is built here for encoders (BERT, RoBERTa, XLM-R), not {a.title}"
                        for a in ARCHS.values() if a.kind != "encoder"}),
)
