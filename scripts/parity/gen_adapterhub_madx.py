"""Fixture from AdapterHub `adapters` for MAD-X's stacked adapters (tests/test_parity_madx.py compares
bench/methods/madx.py with it).

On the tiny RoBERTa of gen_adapterhub_bottleneck.py (its base fixture `adapterhub-base-roberta`, the same weights
and batch), as AdapterHub's MAD-X tutorial sets it up: a language adapter `SeqBnInvConfig(reduction_factor=2)`
(with its NICE invertible adapter on the embeddings, reduction factor 2), a task adapter `SeqBnConfig()`,
`train_adapter(["task"])`, then `active_adapters = Stack("lang", "task")`. Every adapter weight is its init plus
noise (the up projections are otherwise ~0 and parity would be vacuous). Stored: the weights, logits, final hidden
states and loss of the stack, every trained tensor's gradient (the task adapter and the head), and the logits of
Stack("other", "task") with a second language adapter (the swap at test time). Also the reference's own counts
of the language (with its invertible adapter) and task adapters on XLM-R base's config, for the closed forms.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapters  # noqa: E402
from adapters import SeqBnConfig, SeqBnInvConfig  # noqa: E402
from adapters.composition import Stack  # noqa: E402
from common import save  # noqa: E402
from gen_adapterhub_bottleneck import NOISE, SEED, base_model, batch, plain, run  # noqa: E402
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification  # noqa: E402

LANGUAGE, OTHER, TASK = "lang", "other", "task"
LANGUAGE_CONFIG, TASK_CONFIG = SeqBnInvConfig(reduction_factor=2), SeqBnConfig()
XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, num_labels=3)


def our_name(reference: str) -> str:
    """AdapterHub's parameter name -> ours (bench/methods/madx.py); the head keeps its transformers name."""
    match = re.fullmatch(rf"(.*\.output)\.adapters\.({LANGUAGE}|{OTHER}|{TASK})\.(adapter_down\.0|adapter_up)\.(\w+)",
                         reference)
    if match:
        block, adapter, projection, leaf = match.groups()
        return f"{block}.dense.madx.{'task' if adapter == TASK else 'language'}." \
               f"{'down' if projection == 'adapter_down.0' else 'up'}.{leaf}"
    match = re.fullmatch(rf"roberta\.invertible_adapters\.({LANGUAGE}|{OTHER})\.(.*)", reference)
    if match:
        return f"roberta.embeddings.invertible_adapter.{match.group(2)}"
    return reference


def with_noise(model, names: list[str], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(NOISE * torch.randn(params[n].shape, generator=generator))


def adapter_names(model, adapter: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if f".{adapter}." in n]


def xlmr_base_counts() -> dict[str, int]:
    """The reference's parameter count of each adapter on XLM-R base (built from its config, random init)."""
    model = XLMRobertaForSequenceClassification(XLMRobertaConfig(**XLMR_BASE))
    adapters.init(model)
    model.add_adapter(LANGUAGE, config=LANGUAGE_CONFIG)
    model.add_adapter(TASK, config=TASK_CONFIG)
    counts = {a: sum(p.numel() for n, p in model.named_parameters() if f".{a}." in n) for a in (LANGUAGE, TASK)}
    counts["invertible"] = sum(p.numel() for n, p in model.named_parameters()
                               if f"invertible_adapters.{LANGUAGE}." in n)
    return counts


def generate() -> None:
    model, config = base_model("roberta")
    inputs = batch(config)
    adapters.init(model)
    torch.manual_seed(SEED + 1)
    for name, adapter_config in ((LANGUAGE, LANGUAGE_CONFIG), (OTHER, LANGUAGE_CONFIG), (TASK, TASK_CONFIG)):
        model.add_adapter(name, config=adapter_config)
    model.train_adapter([TASK])
    model.active_adapters = Stack(LANGUAGE, TASK)
    model.eval()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    used = {a: adapter_names(model, a) for a in (LANGUAGE, OTHER, TASK)}
    for i, a in enumerate((LANGUAGE, OTHER, TASK)):
        with_noise(model, used[a], SEED + 2 + i)
    params = dict(model.named_parameters())
    tensors = {f"used.{n}": params[n].detach().clone() for a in used for n in used[a]}
    logits, hidden, loss = run(model, inputs)
    loss.backward()
    tensors.update(logits=logits, hidden=hidden, loss=loss)
    tensors.update({f"grad.{n}": p.grad for n, p in trained.items()})
    model.active_adapters = Stack(OTHER, TASK)
    with torch.no_grad():
        tensors["logits_other"] = run(model, inputs)[0]
    save("adapterhub-madx-roberta", tensors, {
        "reference": "AdapterHub adapters", "arch": "roberta", "method": "madx", "overrides": {},
        "reference_configs": {LANGUAGE: plain(LANGUAGE_CONFIG), TASK: plain(TASK_CONFIG)},
        "setup": f"train_adapter([{TASK!r}]); active_adapters = Stack({LANGUAGE!r}, {TASK!r}); "
                 f"logits_other: Stack({OTHER!r}, {TASK!r})",
        "name_map": {n: our_name(n) for a in used for n in used[a]} | {n: our_name(n) for n in trained},
        "languages": {LANGUAGE: used[LANGUAGE], OTHER: used[OTHER]},
        "reference_trained": sorted(trained),
        "xlmr_base": {"config": XLMR_BASE, "counts": xlmr_base_counts()},
        "noise": NOISE, "seed": SEED, "base": "adapterhub-base-roberta",
        "what": "used.* every adapter's weights (init + noise); logits, hidden, loss and grad.* of the trained "
                "tensors under Stack(lang, task); logits_other under Stack(other, task)",
    })


if __name__ == "__main__":
    generate()
