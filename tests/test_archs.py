"""The architecture table: every entry's names exist in a real model of that architecture."""

import importlib
import re

import pytest

from bench import archs, methods, models, tiny
from bench.archs import ARCH_OF_MODEL_TYPE, ARCHS
from bench.layers import sites
from tests.adapting import build_bundle


def tiny_model_name(arch: str) -> str:
    return next(s.name for s in models.REGISTRY.values() if s.source == "tiny" and s.arch == arch)


def tiny_model(arch: str):
    """The architecture's tiny model at its native task (classification on encoders, generation elsewhere)."""
    return build_bundle(tiny_model_name(arch)).model


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_declared_name_matches_modules_of_the_tiny_model(arch):
    spec = ARCHS[arch]
    model = tiny_model(arch)
    names = [n for n, _ in model.named_modules()]
    assert model.config.model_type in spec.model_types and ARCH_OF_MODEL_TYPE[model.config.model_type] == arch
    assert model.config.hidden_size == tiny.WIDTH or getattr(model.config, "d_model", None) == tiny.WIDTH
    for suffix in spec.q_v + spec.norms:  # peft's suffix match
        assert any(n == suffix or n.endswith("." + suffix) for n in names), f"{arch}: no module named {suffix}"
    for key in ("target_modules", "feedforward_modules"):  # peft's full match
        assert any(re.fullmatch(spec.ia3[key], n) for n in names), f"{arch}: (IA)³ {key} matches nothing"
    feedforward = [n for n in names if re.fullmatch(spec.ia3["feedforward_modules"], n)]
    assert all(re.fullmatch(spec.ia3["target_modules"], n) for n in feedforward)  # peft requires a subset
    for site in [s for s in spec.sites if s != "ffn_input_arg"]:
        found = sites.find(model, arch, site)
        assert len(found) >= tiny.DEPTH, f"{arch}: {site} found {len(found)} modules"
    importlib.import_module(spec.modeling)  # the fork server preloads it


def test_kinds_and_model_types():
    assert {a.kind for a in ARCHS.values()} == {"encoder", "encoder-decoder", "decoder"}
    assert len(ARCH_OF_MODEL_TYPE) == sum(len(a.model_types) for a in ARCHS.values())  # no type claimed twice
    assert models.resolve_model("mistral-7b").kind == "decoder"


def test_methods_read_their_targets_from_the_table():
    """The per-architecture settings of the LoRA family, (IA)³ and LN-tuning are the table's, for every
    architecture in it; methods that need nn.Linear are unsupported exactly where layers are Conv1D."""
    for arch, spec in ARCHS.items():
        assert methods.get("lora").targets[arch] == {"target_modules": spec.q_v}
        assert methods.get("ia3").targets[arch] == spec.ia3
        assert methods.get("ln-tuning").targets[arch] == {"target_modules": spec.norms}
        for name in ("loha", "lokr", "oft", "boft", "qlora"):
            assert (arch in methods.get(name).unsupported) == spec.conv1d
    assert "GPT-2's Conv1D" in methods.get("loha").unsupported["gpt2"]


def test_an_unknown_site_is_unsupported_not_a_crash():
    from bench.errors import Unsupported

    with pytest.raises(Unsupported, match="no cross_attention site"):
        sites.find(tiny_model("roberta"), "roberta", "cross_attention")


def test_targets_helper_covers_every_architecture():
    assert set(archs.targets(lambda a: a.kind)) == set(ARCHS)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_declared_head_is_the_classification_model_s_new_head(arch, tiny_bundle):
    """A sequence-classification model of each architecture has exactly the declared head children."""
    task_type = "classification" if ARCHS[arch].kind == "encoder" else "regression"  # the classifier head elsewhere
    bundle = tiny_bundle(tiny_model_name(arch), task_type, 2)
    assert bundle.head == "classifier" and bundle.head_modules == list(ARCHS[arch].head_modules)
