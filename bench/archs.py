"""The architecture table: everything the harness knows about a transformer architecture, in one entry.

Models resolve to an architecture (`model_types`: config.json's `model_type` values it covers); its
kind decides heads and cost factors; methods read their targets from it (q/v projections, (IA)³'s
keys/values/FFN, the norms); in-house methods attach at its sites; the fork server preloads its
modeling module; the tiny offline model is its config at toy size. Adding an architecture is one
entry here (and its rows in the tests' closed-form counts).

Module names are matched as peft matches them: a list of name suffixes, or one regular expression
searched against full module names (sites: bench/layers/sites.py says what each site is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# (IA)³ takes regular expressions (full match) so "output.dense" names the FFN output of each layer
# only, not the attention output, which a suffix match would also catch on BERT-style models.
_BERT_FFN = r".*layer\.\d+\.output\.dense"


@dataclass(frozen=True)
class ArchSpec:
    name: str
    title: str  # as people write it, for messages: "GPT-2"
    kind: str  # encoder | encoder-decoder | decoder
    model_types: tuple[str, ...]  # config.json model_type values of this architecture
    modeling: str  # transformers' module with its model code (preloaded by the fork server)
    config_class: str  # transformers' config class, for the tiny model
    # (width, depth, heads, ffn) -> that config's settings for a model of those sizes (bench/tiny.py
    # chooses the sizes; ids and vocabulary come from the tiny tokenizer)
    tiny: Callable[[int, int, int, int], dict]
    # Attention query and value projections, as in the LoRA paper's GLUE runs (LoRA and its family).
    # GPT-2 fuses q, k and v into one Conv1D (c_attn), so there the update covers all three (and
    # (IA)³ rescales the queries too).
    q_v: list[str]
    ia3: dict  # (IA)³: keys, values and the FFN's inner activation; which of them are feed-forward
    norms: list[str]  # normalisation layers (LN-tuning)
    # The children under which transformers puts a freshly initialised sequence-classification head:
    # every trained method trains them, and a tiny model re-draws them per seed.
    head_modules: tuple[str, ...]
    sites: dict = field(default_factory=dict)  # where in-house methods attach (bench/layers/sites.py)
    conv1d: bool = False  # linear layers are transformers' Conv1D (weight stored transposed), not nn.Linear
    # Linear layers built without a bias, which BitFit gives zero biases to train (T-Few's BitFit on T0:
    # its `bitfit_layers` "q|k|v|o|wi_[01]|w_o"; `w_o` names no T5 module, so T5's `wo` gets none).
    bias_free: tuple[str, ...] = ()


_BERT_SITES = {"self_attention": r"layer\.\d+\.attention\.self$",
               "attention_output": r"layer\.\d+\.attention\.output\.dense$",
               "ffn_output": r"layer\.\d+\.output\.dense$", "ffn_input": r"layer\.\d+\.output$", "ffn_input_arg": 1,
               "ffn_norm": r"layer\.\d+\.output\.LayerNorm$"}


def _bert_tiny(positions: int, **extra):
    return lambda w, d, h, f: dict(hidden_size=w, num_hidden_layers=d, num_attention_heads=h, intermediate_size=f,
                                   max_position_embeddings=positions, **extra)


ARCHS: dict[str, ArchSpec] = {a.name: a for a in (
    ArchSpec("roberta", "RoBERTa", "encoder", ("roberta", "xlm-roberta"), "transformers.models.roberta.modeling_roberta",
             "RobertaConfig", _bert_tiny(514, type_vocab_size=1),
             ["query", "value"],
             {"target_modules": rf".*layer\.\d+\.attention\.self\.(key|value)|{_BERT_FFN}",
              "feedforward_modules": _BERT_FFN},
             ["LayerNorm"], ("classifier",), _BERT_SITES),
    ArchSpec("bert", "BERT", "encoder", ("bert",), "transformers.models.bert.modeling_bert",
             "BertConfig", _bert_tiny(512),
             ["query", "value"],
             {"target_modules": rf".*layer\.\d+\.attention\.self\.(key|value)|{_BERT_FFN}",
              "feedforward_modules": _BERT_FFN},
             ["LayerNorm"], ("classifier",), _BERT_SITES),
    ArchSpec("t5", "T5", "encoder-decoder", ("t5", "mt5"), "transformers.models.t5.modeling_t5",
             "T5Config", lambda w, d, h, f: dict(d_model=w, d_kv=w // h, d_ff=f, num_layers=d, num_heads=h,
                                                 decoder_start_token_id=0),  # the tiny tokenizer's <pad>
             ["q", "v"], {"target_modules": r".*\.(k|v|wo)", "feedforward_modules": r".*\.wo"},
             ["layer_norm", "final_layer_norm"], ("classification_head",),
             {"self_attention": r"\.SelfAttention$", "cross_attention": r"\.EncDecAttention$",
              "attention_output": r"\.SelfAttention\.o$", "ffn_output": r"\.DenseReluDense\.wo$",
              "ffn_input": r"\.DenseReluDense$", "ffn_input_arg": 0,
              # the FF layer: the last of an encoder block's two, of a decoder block's three (self, cross, FF)
              "ffn_block": r"(encoder\.block\.\d+\.layer\.1|decoder\.block\.\d+\.layer\.2)$"},
             bias_free=("q", "k", "v", "o", "wi_0", "wi_1")),
    ArchSpec("gpt2", "GPT-2", "decoder", ("gpt2",), "transformers.models.gpt2.modeling_gpt2",
             "GPT2Config", lambda w, d, h, f: dict(n_embd=w, n_layer=d, n_head=h, n_inner=f, n_positions=512),
             ["c_attn"], {"target_modules": r".*\.(attn\.c_attn|mlp\.c_proj)", "feedforward_modules": r".*\.mlp\.c_proj"},
             ["ln_1", "ln_2", "ln_f"], ("score",),
             {"self_attention": r"\.attn$", "attention_output": r"\.attn\.c_proj$", "ffn_output": r"\.mlp\.c_proj$",
              "ffn_input": r"\.mlp$", "ffn_input_arg": 0, "ffn_block": r"\.h\.\d+$"}, conv1d=True),
    # Mistral and Qwen2 name their modules as LLaMA does (q_proj, v_proj, mlp.down_proj, ...).
    ArchSpec("llama", "LLaMA", "decoder", ("llama", "mistral", "qwen2"), "transformers.models.llama.modeling_llama",
             "LlamaConfig", lambda w, d, h, f: dict(hidden_size=w, num_hidden_layers=d, num_attention_heads=h,
                                                   num_key_value_heads=h // 2, intermediate_size=f,
                                                   max_position_embeddings=512),
             ["q_proj", "v_proj"], {"target_modules": r".*\.(k_proj|v_proj|down_proj)",
                                    "feedforward_modules": r".*\.down_proj"},
             ["input_layernorm", "post_attention_layernorm", "norm"], ("score",),
             {"self_attention": r"\.self_attn$", "attention_output": r"\.self_attn\.o_proj$",
              "ffn_output": r"\.mlp\.down_proj$", "ffn_input": r"\.mlp$", "ffn_input_arg": 0,
              "ffn_block": r"\.layers\.\d+$"},
             bias_free=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
)}
ARCH_OF_MODEL_TYPE = {t: a.name for a in ARCHS.values() for t in a.model_types}


def targets(read) -> dict[str, dict]:
    """A method's per-architecture target settings, `read(arch)` of every architecture: e.g.
    `targets(lambda a: {"target_modules": a.q_v})`."""
    return {a.name: read(a) for a in ARCHS.values()}


def unsupported_on_conv1d(why: str) -> dict[str, str]:
    """A method's `unsupported` entries for the architectures whose linear layers are Conv1D: `why`
    with {arch} replaced by the architecture's title."""
    return {a.name: why.format(arch=a.title) for a in ARCHS.values() if a.conv1d}
