"""What a method is: a name, its family and paper, explicit defaults and per-architecture targets,
and a `build` function that adapts a model in place and says what trains and what must be stored.

A comparison is only fair if it says what was adapted, so target modules are never left to a
library's defaults: each method lists them per architecture, and the resolved config is recorded.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.config import TrainConfig, check_keys, coerce
from bench.errors import BadInput, Unsupported

if TYPE_CHECKING:  # declaring a method needs no torch (bench/layers/__init__.py says why)
    import torch
    from torch import nn

# external: adapters trained elsewhere, evaluated as given (bench/methods/external.py)
FAMILIES = ("baseline", "additive", "partial", "reparameterized", "hybrid", "unified", "external")


@dataclass
class ApplyContext:
    """What a method may need besides the model: the task head, the training plan, calibration data."""

    bundle: Any  # models.Bundle
    train: TrainConfig
    total_steps: int
    # calibration(n, per_example=False): the cell's first n training batches, drawn and collated as training does
    # (train.training_batches, its objective), on its device; per_example: each example a batch of its own
    calibration: Callable[..., list[dict]] | None = None
    device: Any = "cpu"
    task: Any = None  # tasks.TaskSpec of the cell (in-context learning renders its demonstrations)
    train_rows: Any = ()  # the rows training draws from (the k shots of a few-shot cell)
    # the states saved by the stage cells a method's settings name (Method.stage_settings), in their order
    stage_states: Any = ()
    # the cell's autocast (bench/cell/train.py autocast_for), under which its training steps' forwards run: the Fisher
    # methods' scoring passes run under it too, so they score the model as it trains
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    # the loss the cell trains, of (model, a calibration batch): its objective's (bench/cell/objectives.py
    # Objective.loss: T-Few's terms, a mixture's rows through their task heads); None: the model's own
    loss: Callable[[Any, dict], Any] | None = None


def trainable_state(model: nn.Module, skip: frozenset[int] | set[int] = frozenset()) -> dict[str, torch.Tensor]:
    """The trainable tensors by name, but those whose id is in `skip` (a method stores them its own way)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad and id(p) not in skip}


def method_settings(config: dict) -> dict:
    """A resolved method config without the keys Method.resolve derives (which code, which revision): the
    settings a build takes, and that resolve takes back as overrides."""
    return {k: v for k, v in config.items() if k not in ("implementation", "revision")}


def load_by_name(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load tensors by parameter name; a name the model does not have is an error."""
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"stored tensors not in the model: {unexpected}")


def composed_size(states: list[dict[str, torch.Tensor]]) -> dict[str, int | None]:
    """params.composed and composed_bytes: the parameter elements and safetensors bytes of each state a model reads
    of other cells' (each its own file), summed; null for a model that reads none."""
    from bench.tensors import safetensors_size

    sizes = [safetensors_size(state) for state in states]
    return {"composed": sum(n for n, _ in sizes) if sizes else None,
            "composed_bytes": sum(b for _, b in sizes) if sizes else None}


@dataclass
class Selection:
    """What a method that chooses its trained entries from data (Fisher scores) does before training, as its
    meta-device twin declares it for `estimate` (bench/tools/selection_cost.py prices it): `passes` forward and
    backward passes of `rows` rows each at the model's eval mode under the cell's autocast (ApplyContext.autocast)
    and gradient checkpointing,
    computing the gradients of `scored` only, while the calibration batches (`calibration_rows` rows) and
    `held_bytes` of scores are alive, with `pass_bytes` of temporaries beside the gradients after each backward;
    then the choice itself, holding `choice_bytes` at its busiest. The twin trains every tensor that may get a
    selected entry: `upper_bound` says why that bounds the cell's trained tensors from above."""

    scored: list
    passes: int
    rows: int
    calibration_rows: int
    held_bytes: int
    pass_bytes: int
    choice_bytes: int
    mask_bytes: int  # the masks, held through training
    upper_bound: str


@dataclass
class Adapted:
    """A model after a method was applied, with what the harness needs to train, store and check it."""

    model: nn.Module
    trains: bool = True  # set from the Method by Method.apply
    in_context: bool = False  # set from the Method by Method.apply
    external: bool = False  # set from the Method by Method.apply
    after_backward: list[Callable[[int], None]] = field(default_factory=list)  # e.g. gradient masks
    after_step: list[Callable[[int], None]] = field(default_factory=list)  # e.g. AdaLoRA's rank budget
    stored_state: Callable[[], dict[str, torch.Tensor]] | None = None  # default: trainable tensors
    load_stored: Callable[[dict[str, torch.Tensor]], None] | None = None  # inverse of stored_state
    merge: Callable[[], nn.Module] | None = None  # mergeable methods: the model with the update folded in
    # Methods that update only some entries of a tensor: (parameter, bool mask of the entries that train).
    grad_masks: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)
    # Parameters the method chose not to train among those it could have (a Fisher-masked method's eligible tensors
    # with no selected entry): a composition keeps them frozen unless a later part trains them (compose.py)
    untrained: list[nn.Parameter] = field(default_factory=list)
    # params.composed and composed_bytes of what the model reads of states other cells saved (AdapterFusion's task
    # adapters, MAD-X's target languages' adapters), which it needs beside its own stored state: composed_size of
    # them, taken when they are read, so the cell holds their sizes, never a second copy of their tensors
    composed: dict[str, int | None] = field(default_factory=lambda: composed_size([]))
    # A meta-device twin's masks have no values: the entries they select, known in closed form (None: counted)
    selected_entries: int | None = None
    selection: Selection | None = None  # a meta-device twin's phase before training (Fisher scoring)

    def state_to_store(self) -> dict[str, torch.Tensor]:
        """The tensors that must be saved to restore the fine-tuned model (task head included)."""
        if self.stored_state is not None:
            return self.stored_state()
        return trainable_state(self.model)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_to_store` saved into a model with the same method freshly applied."""
        if self.load_stored is not None:
            return self.load_stored(state)
        load_by_name(self.model, state)

    def params(self) -> dict:
        from bench.tensors import count_params

        return count_params(self.model, self.grad_masks, self.selected_entries)


Build = Callable[["nn.Module", dict, ApplyContext], Adapted]


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    description: str
    paper: str
    build: Build
    defaults: dict = field(default_factory=dict)
    targets: dict[str, dict] = field(default_factory=dict)  # architecture -> target settings
    # architecture -> settings only some architectures need; unlike targets, absent elsewhere (so the
    # other architectures' cells keep their ids) and never required
    arch_defaults: dict[str, dict] = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # recommended training settings, e.g. its learning rate
    mergeable: bool = False
    trains: bool = True  # False: evaluated as applied (zero-shot, in-context learning)
    # False: only the head trains, nothing below it needs a gradient (head-only); Liger's fused linear cross-entropy
    # then computes no gradient for an LM head (bench/plan/kernels.py refuses it)
    trains_below_head: bool = True
    in_context: bool = False  # evaluation prompts start with the training examples, solved (needs `shots`)
    reference: bool = False  # the row other methods of a model are compared with (full fine-tuning)
    external: bool = False  # loads weights trained elsewhere: the record's cell.source is "external"
    unsupported: dict[str, str] = field(default_factory=dict)  # architecture -> why this cannot work
    # Which code runs the method, where two exist for one mechanism; it goes into the resolved config
    # (and so the cell id), so a record of one is never taken for the other.
    implementation: str | None = None
    # architecture -> this method's revision there, where a fix changed what it computes (1 elsewhere). It goes
    # into the resolved config (and so the cell id) only there, so records made before the fix are rerun, not
    # reused, and the report shows the newer (bench/report/aggregate.latest_records); other cells keep their ids.
    revisions: dict[str, int] = field(default_factory=dict)
    # Optional packages (OPTIONAL_PACKAGES) the method's build needs: planning commands keep the others out of
    # their process (keep_out_optional_packages), since peft imports bitsandbytes whenever it is installed (~1 s).
    packages: tuple[str, ...] = ()
    # The method adds to an encoder-decoder's input inside the model's own forward (peft's soft prompts), so the
    # encoder cannot run apart from it, once per prompt (bench/cell/evaluate.py: encodes_once): rank classification
    # then encodes the prompt once per answer option, and the dry-run prices it so.
    encodes_in_forward: bool = False
    # Settings whose values name stages of the suite (bench/plan/stages.py), each with the method those stages must
    # train: the grid runs those stage cells first, puts their cell ids in the resolved config (so in the id), and
    # the cell receives their saved states (ApplyContext.stage_states); AdapterFusion's task adapters.
    stage_settings: dict[str, str] = field(default_factory=dict)
    # Pairs of settings that give one size two ways (OFT's block size or its number of blocks `r`, since block size
    # × blocks = the layer's input features): exactly one of a pair is nonzero, the other 0, as peft's configs
    # require; each may be 0 whatever its default's sign (resolve refuses both or neither nonzero). Both are in
    # `defaults`, exactly one of them nonzero (checked where the Method is made).
    one_nonzero: tuple[tuple[str, str], ...] = ()
    # Why FSDP2 cannot run a cell of it, "" where it can (QLoRA: a sharded Params4bit becomes a DTensor without its
    # quant_state; the Fisher-masked methods: fully_shard replaces the parameters their gradient masks are bound to):
    # `estimate --shards` > 1 refuses it, packing sizes it whole (Packer.demand's `shardable`) and a sharded rank
    # refuses it before loading the model (bench/cell/sharded.py refuse_unshardable)
    unshardable: str = ""

    def __post_init__(self):
        assert self.family in FAMILIES, self.family
        for pair in self.one_nonzero:  # resolve reads both keys of a pair: a method module's mistake shows here
            declared = {key: self.defaults.get(key, "(absent)") for key in pair}
            if "(absent)" in declared.values() or sum(bool(value) for value in declared.values()) != 1:
                raise ValueError(f"method '{self.name}': one_nonzero pair {pair} needs both keys in its defaults, "
                                 f"exactly one of them nonzero; its defaults give {declared}")

    @property
    def shardable(self) -> bool:
        return not self.unshardable

    @property
    def target_keys(self) -> set[str]:
        return {k for t in self.targets.values() for k in t}

    def resolve(self, overrides: dict, arch: str, where: Callable[[str], str], flags: bool = False) -> dict:
        """Defaults, then this architecture's targets, then the suite's overrides (type-checked); `flags`: the
        overrides are `--set` flags (`estimate`), so an error's example is spelled as flags, not as YAML."""
        per_arch = self.target_keys | {k for d in self.arch_defaults.values() for k in d}
        allowed = {**self.defaults, **{k: None for k in per_arch}}
        check_keys(overrides, allowed, f"{self.name} setting", where)
        config = copy.deepcopy(self.defaults)
        config.update({k: None for k in self.target_keys})
        config.update(copy.deepcopy(self.targets.get(arch, {})))
        config.update(copy.deepcopy(self.arch_defaults.get(arch, {})))
        paired = {key for pair in self.one_nonzero for key in pair}
        for key, value in overrides.items():
            # module names are a list, or one regular expression / peft keyword ("all-linear")
            spec = (list, str) if key in per_arch or key == "target_modules" else _type_of(allowed[key])
            config[key] = coerce(value, spec, where(key), key)
            _check_sign(key, config[key], 0 if key in paired else allowed[key], where(key))
        for pair in self.one_nonzero:
            _check_one_nonzero(pair, config, [k for k in overrides if k in pair], where, flags)
        if self.implementation:
            config["implementation"] = self.implementation
        if arch in self.revisions:
            config["revision"] = self.revisions[arch]
        return config

    def apply(self, model: nn.Module, config: dict, ctx: ApplyContext) -> Adapted:
        if ctx.bundle.arch in self.unsupported:
            raise Unsupported(self.unsupported[ctx.bundle.arch])
        missing = [k for k in self.target_keys if config.get(k) is None]
        if missing:
            raise Unsupported(f"{self.name} declares no {', '.join(sorted(missing))} for architecture "
                              f"'{ctx.bundle.arch}'; set them in the method's overrides")
        adapted = self.build(model, method_settings(config), ctx)
        # declared here, not by the build
        adapted.trains, adapted.in_context, adapted.external = self.trains, self.in_context, self.external
        return adapted

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "description": self.description, "paper": self.paper,
                "defaults": self.defaults, "targets": self.targets, "arch_defaults": self.arch_defaults,
                "train": self.train,
                "mergeable": self.mergeable, "trains": self.trains, "in_context": self.in_context,
                "reference": self.reference, "external": self.external, "unsupported": self.unsupported,
                "implementation": self.implementation, "revisions": self.revisions,
                "encodes_in_forward": self.encodes_in_forward, "stage_settings": self.stage_settings,
                "one_nonzero": [list(pair) for pair in self.one_nonzero]}


# Every method by name. A method module registers its methods when it is imported: the package imports
# each of its own modules (bench/methods/__init__.py), a suite's `method_modules` import theirs.
REGISTRY: dict[str, Method] = {}


def register(*new: Method) -> None:
    """Add methods to the registry; registering the same definition twice (one module imported under
    two names) is harmless, a different method under a taken name is an error."""
    for method in new:
        known = REGISTRY.get(method.name)
        if known is not None and _definition(known) != _definition(method):
            raise ValueError(f"a method named '{method.name}' is already registered")
        REGISTRY[method.name] = method


def _definition(method: Method) -> tuple:
    return method.family, method.description, method.paper, method.build.__qualname__


MAX_SETTING = 2 ** 24  # an integer method setting (rank, bottleneck, prompt length) past this is a typo


def _check_sign(key: str, value: Any, default: Any, where: str) -> None:
    """Numeric settings keep the sign of their default: positive where it is positive (ranks, sizes,
    ratios, learning-rate-like scales), not negative where it is zero (dropouts, seeds)."""
    if isinstance(default, bool) or not isinstance(default, (int, float)) or isinstance(value, bool):
        return
    if default > 0 and not value > 0:
        raise BadInput(f"'{key}' must be positive, got {value!r}", where)
    if isinstance(value, int) and value > MAX_SETTING:
        raise BadInput(f"'{key}' = {value:,} is beyond {MAX_SETTING:,}: a typo? (a rank or size that large "
                       "would only fill the memory)", where)
    if default == 0 and not value >= 0:
        raise BadInput(f"'{key}' must not be negative, got {value!r}", where)


def _check_one_nonzero(pair: tuple[str, str], config: dict, given: list[str], where: Callable[[str], str],
                       flags: bool) -> None:
    """BadInput naming both settings of a Method.one_nonzero pair unless exactly one is nonzero, at the last of
    them the overrides gave (`given`), each value not given marked as the default; its example is spelled as
    `--set` flags (`flags`) or as a suite's YAML."""
    nonzero = [key for key in pair if config[key]]
    if len(nonzero) == 1:
        return
    first, second = pair
    example = f"--set {second}=N --set {first}=0" if flags else f"`{second}: N, {first}: 0` in the method's overrides"
    got = ", ".join(f"{key} = {config[key]!r}{'' if key in given else ' (its default)'}" for key in pair)
    raise BadInput(f"'{first}' and '{second}' give one size two ways: set exactly one of them nonzero and the other "
                   f"0 (e.g. {example}); got {got}, {'both' if nonzero else 'neither'} nonzero",
                   where(given[-1]) if given else None)


def _type_of(default: Any):
    if isinstance(default, bool):
        return bool
    if isinstance(default, float):
        return float
    if isinstance(default, int):
        return int
    if isinstance(default, (list, tuple)):
        return (list, str)  # a list of names, or one regular expression
    return type(default)


# Helpers shared by the in-house methods.

def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def train_head(model: nn.Module, ctx: ApplyContext) -> None:
    """Every trained method trains the task head, so scores compare the method, not a frozen head.

    When peft already wraps the head (modules_to_save), only its trainable copy trains.
    """
    heads = set(ctx.bundle.head_modules)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in heads:
            target = getattr(module, "modules_to_save", module)
            for p in target.parameters():
                p.requires_grad_(True)


OPTIONAL_PACKAGES = ("bitsandbytes",)


def keep_out_optional_packages(method_names) -> list[str]:
    """Make every optional package that none of the named methods needs unimportable in this process (libraries
    that probe for it, as peft does, then take it as absent), and return those kept out. For the planning
    commands (estimate, dry-run), which build methods on the meta device and exit: a process that runs cells
    never calls this. An unregistered name (a composition) keeps every package importable."""
    import sys

    declared = [REGISTRY.get(name) for name in method_names]
    if any(m is None for m in declared):
        return []
    needed = {p for m in declared for p in m.packages}
    kept_out = [p for p in OPTIONAL_PACKAGES if p not in needed and p not in sys.modules]
    for package in kept_out:
        sys.modules[package] = None  # `import` raises ImportError; importlib.util.find_spec answers None
    return kept_out

