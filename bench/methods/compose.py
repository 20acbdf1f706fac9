"""Unified fine-tuning: a suite composes a hybrid from registry methods, `{compose: [a, b]}`.

Parts are applied in order to the same model. A part may freeze the whole model before adding its
own parameters, so what trains afterwards is the union of what each part left trainable. Each part
keeps what it declared: its gradient masks, and its own stored state (a folded prefix, a sparse
update), saved under `part<i>/`; trainable tensors no part stores its own way are saved by name. A
tensor two parts train keeps the mask of the part that masks it (the stricter rule wins). A tensor a part chose not
to train among those it could have (Adapted.untrained: a Fisher-masked part's tensor with no selected entry, an
earlier part's LoRA matrix included) stays frozen unless a later part trains it.
peft wraps the model it adapts and cannot adapt its own wrapper again, so a composition holds at
most one peft-based part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.errors import BadInput, Unsupported
from bench.methods.base import REGISTRY, Adapted, ApplyContext, load_by_name, method_settings, trainable_state

if TYPE_CHECKING:
    import torch

FAMILY = "unified"


def composition_name(parts: list[str]) -> str:
    """The name a composition's records carry: compose(a+b)."""
    return "compose(" + "+".join(parts) + ")"


def is_composition(name: str) -> bool:
    return name.startswith("compose(")


class Composition:
    """What applies a compose(a+b) cell's method, as a registered Method applies its own; `estimate` also asks for
    its name, family and resolved config, as of a Method."""

    in_context = False
    trains = True  # every part trains: a part that trains nothing is refused (parts_of)
    family = FAMILY

    def __init__(self, name: str):
        self.name = name
        self.parts = name[len("compose("):-1].split("+")

    @property
    def trains_below_head(self) -> bool:
        return any(REGISTRY[part].trains_below_head for part in self.parts)

    @property
    def unshardable(self) -> str:
        return "; ".join(f"{part}: {REGISTRY[part].unshardable}" for part in self.parts if REGISTRY[part].unshardable)

    @property
    def shardable(self) -> bool:
        return not self.unshardable

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(sorted({package for part in self.parts for package in REGISTRY[part].packages}))

    def resolve(self, overrides: dict, arch: str, where, flags: bool = False) -> dict:
        """The config a cell of this composition carries: every part at its defaults on `arch`, or `overrides` when
        they are one (`parts`: each part's name and config, as bench/plan/grid.py resolves a suite's `compose:`
        entry and the dry-run prices its cells), each part's config checked as that part's overrides. A part takes
        its settings on its own entry of the suite's `compose:` list, so any other key is refused, never dropped."""
        for key in overrides:
            if key != "parts":
                raise BadInput(f"{self.name} takes no setting '{key}': a composition's settings are its parts', each "
                               f"given on its own entry of a suite's `compose:` list (compose: [{{name: "
                               f"{self.parts[0]}, overrides: {{...}}}}, {self.parts[1]}]); the one key here is "
                               "`parts`, every part's name and config", where(key), ["parts"])
        given = overrides.get("parts", [{"name": part, "config": {}} for part in self.parts])
        if not isinstance(given, list) or [p.get("name") if isinstance(p, dict) else p for p in given] != self.parts:
            raise BadInput(f"'parts' of {self.name} must be its parts in order, each a mapping of its name and "
                           f"config ({{name: {self.parts[0]}, config: {{...}}}}), got {given!r}", where("parts"))
        return {"parts": [{"name": p["name"], "config": REGISTRY[p["name"]].resolve(
            method_settings(p.get("config", {})), arch, lambda key: where("parts"), flags)} for p in given]}

    def apply(self, model, config: dict, ctx: ApplyContext) -> Adapted:
        return apply_composition(config["parts"], model, ctx)


def apply_composition(parts: list[dict], model, ctx: ApplyContext) -> Adapted:
    chosen = [REGISTRY[p["name"]] for p in parts]
    peft_parts = [m.name for m in chosen if getattr(m.build, "peft_config_class", None)]
    if len(peft_parts) > 1:
        raise Unsupported(f"a composition can hold one peft-based method, not {', '.join(peft_parts)}")
    for method in chosen:
        if not method.trains:
            raise Unsupported(f"'{method.name}' trains nothing, so it cannot be part of a composition")
    applied: list[tuple[Adapted, set[int]]] = []  # each part, and the tensors it left trainable
    for method, part in zip(chosen, parts):
        adapted = method.apply(model, part["config"], ctx)
        model = adapted.model
        applied.append((adapted, {id(p) for p in model.parameters() if p.requires_grad}))
    params = {id(p): p for p in model.parameters()}
    trained: set[int] = set()
    for adapted, trainable in applied:  # a part's choice not to train a tensor holds until a later part trains it
        trained = (trained - {id(p) for p in adapted.untrained}) | trainable
    for pid in trained:
        params[pid].requires_grad_(True)
    _freeze_replaced_originals(model)
    own_state = [(i, a) for i, (a, _) in enumerate(applied) if a.stored_state is not None]
    covered = set().union(*(applied[i][1] for i, _ in own_state))

    def stored() -> dict[str, torch.Tensor]:
        state = {f"part{i}/{k}": v for i, a in own_state for k, v in a.state_to_store().items()}
        state.update(trainable_state(model, skip=covered))
        return state

    def load(state: dict[str, torch.Tensor]) -> None:
        for i, a in own_state:
            prefix = f"part{i}/"
            a.load_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        rest = {k: v for k, v in state.items() if "/" not in k}  # parameter names never hold a "/"
        load_by_name(model, rest)

    # meta-device twins of Fisher-masked parts (bench/methods/fisher.py): their closed-form counts, their selection
    twins = [a for a, _ in applied if a.selected_entries is not None]
    if len(twins) > 1:
        raise Unsupported("the estimate prices one selection before training, and this composition makes "
                          f"{len(twins)} (its Fisher-masked parts)")
    return Adapted(model, after_backward=[h for a, _ in applied for h in a.after_backward],
                   after_step=[h for a, _ in applied for h in a.after_step], stored_state=stored,
                   load_stored=load, grad_masks=[m for a, _ in applied for m in a.grad_masks],
                   selected_entries=twins[0].selected_entries if twins else None,
                   selection=twins[0].selection if twins else None)


def _freeze_replaced_originals(model: torch.nn.Module) -> None:
    """peft trains a copy of each module it saves (`modules_to_save`: the task head) and never reads the
    original again. An in-house part applied before it trained the original head, and BitFit after it
    picks up the original's biases: the union would make those dead tensors trainable (counted, stored,
    never given a gradient)."""
    from peft.utils import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.original_module.requires_grad_(False)
