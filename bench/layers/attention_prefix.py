"""In-house prefix tuning: trainable keys and values prepended in every attention module: encoder
and decoder self-attention, and an encoder-decoder's cross-attention (Li & Liang prefix all three).

peft passes prefixes as past keys/values, which prefixes only T5's decoder and which transformers
5.24 no longer accepts on encoders; the hybrids (MAM, UniPELT) also need prefixes that peft cannot
give them (UniPELT gates them). So the prefix is injected here through transformers' attention interface:
the model's attention implementation is swapped for a registered wrapper that prepends the module's prefix
keys/values, opens the attention mask (and T5's position bias) to them, and calls the original implementation.
Modules without a prefix pass through untouched; generation with a KV cache keeps working because
the cache only ever holds token keys.

Prefixes come from one bank per model: `length` vectors per attention module, either stored directly
or produced by Li & Liang's reparameterisation (embedding -> MLP), which is folded away for storage.
With gating (UniPELT) each module scales its prefix keys and values by a learned gate (see _stash_gate).
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn

from bench.archs import ARCHS
from bench.errors import Unsupported
from bench.layers import sites

_WRAPPED = {"sdpa": "bench_prefix_sdpa", "eager": "bench_prefix_eager"}


def implementation_of(model: nn.Module) -> str | None:
    """The attention implementation `model` runs (transformers' `_attn_implementation`); where a prefix wraps
    it, the implementation wrapped, which does the work."""
    name = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return {wrapper: base for base, wrapper in _WRAPPED.items()}.get(name, name)


def kv_shape(config, arch: str) -> tuple[int, int]:
    """(key/value heads, head dim) of an attention module, from the model config."""
    if arch == "t5":
        return config.num_heads, config.d_kv
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, head_dim


class PrefixBank(nn.Module):
    """Prefix keys and values for `n_modules` attention modules: [length, n_modules · 2 · kv_heads · head_dim]."""

    def __init__(self, n_modules: int, length: int, kv_heads: int, head_dim: int, hidden: int, mid_dim: int = 0):
        super().__init__()
        self.shape = (n_modules, 2, kv_heads, head_dim)
        width = n_modules * 2 * kv_heads * head_dim
        self.length = length
        if mid_dim:  # Li & Liang 2021: a smaller embedding through an MLP trains more stably
            self.embedding = nn.Embedding(length, hidden)
            self.mlp = nn.Sequential(nn.Linear(hidden, mid_dim), nn.Tanh(), nn.Linear(mid_dim, width))
        else:
            self.prefix = nn.Parameter(torch.randn(length, width) * 0.02)

    def folded(self) -> torch.Tensor:
        if hasattr(self, "prefix"):
            return self.prefix
        return self.mlp(self.embedding.weight)

    def keys_values(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[kv_heads, length, head_dim] keys and values of attention module `index`."""
        width = self.shape[1] * self.shape[2] * self.shape[3]
        columns = slice(index * width, (index + 1) * width)  # module `index` owns one block of columns
        if hasattr(self, "prefix"):
            table = self.prefix[:, columns]
        else:  # only this module's rows of the last layer: the full MLP per module would repeat it n_modules times
            hidden, last = self.mlp[1](self.mlp[0](self.embedding.weight)), self.mlp[2]
            table = nn.functional.linear(hidden, last.weight[columns], last.bias[columns])
        table = table.reshape(self.length, *self.shape[1:])  # [length, 2, kv_heads, head_dim]
        return table[:, 0].transpose(0, 1), table[:, 1].transpose(0, 1)


class PrefixSite:
    """What one attention module knows about its prefix (a plain object: not a submodule)."""

    def __init__(self, bank: PrefixBank, index: int, gate: nn.Module | None, input_free_gate: bool):
        self.bank, self.index, self.gate = bank, index, gate
        self.input_free_gate = input_free_gate  # queries are decoder tokens: see _stash_gate
        self.gate_values: torch.Tensor | None = None  # [batch, 2] for keys and values
        self.read = False  # set by the attention wrapper: proof that this module's prefix was used


class InputFreeGate(nn.Module):
    """UniPELT's prefix gate where it may not read the input (see _stash_gate): σ(c), a learned logit for the
    keys and one for the values, starting at 0 (gates of ½). A linear layer on a zero summary would add weights
    that never get a gradient and count them as trained."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))
        self.register_load_state_dict_pre_hook(_drop_zero_input_weight)


def _drop_zero_input_weight(module, state_dict, prefix, *args) -> None:
    """Adapters stored before InputFreeGate held the linear layer's weight too. It multiplied a zero summary,
    σ(W·0 + b) = σ(b), so the stored bias is the logit pair and the weight is dropped: they load unchanged."""
    state_dict.pop(prefix + "weight", None)


def _stash_gate(module, args, kwargs):
    """UniPELT's prefix gate, one value for keys and one for values per example.

    Bidirectional attention: σ(W · mean of the attention input over real tokens), so padding cannot
    move it. Causal self-attention and cross-attention (whose queries are decoder tokens): a summary
    of the sequence would let each token see later ones, so the gate there is learned but
    input-free, σ(c).
    """
    site = module.bench_prefix
    hidden = args[0] if args else kwargs["hidden_states"]
    if site.input_free_gate:
        site.gate_values = torch.sigmoid(site.gate.bias).expand(hidden.shape[0], 2)
        return
    valid = _real_tokens(kwargs.get("attention_mask", kwargs.get("mask")), hidden)
    summary = (hidden * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    site.gate_values = torch.sigmoid(site.gate(summary))


def _real_tokens(mask, hidden) -> torch.Tensor:
    """[batch, length, 1]: 1 for tokens a 4-D attention mask lets the first query see, else 0."""
    if mask is None:
        return hidden.new_ones(*hidden.shape[:2], 1)
    keys = mask[:, 0, 0, :]
    visible = keys if keys.dtype == torch.bool else keys > torch.finfo(keys.dtype).min / 2
    return visible.to(hidden.dtype).unsqueeze(-1)


def _open_mask(mask, length: int, q_len: int, k_len: int, causal: bool, device):
    """The mask with `length` visible columns in front (bool: True = attend; float: additive)."""
    if mask is None:
        if not causal:
            return None
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]
    pad = torch.ones if mask.dtype == torch.bool else torch.zeros
    front = pad(*mask.shape[:-1], length, dtype=mask.dtype, device=mask.device)
    return torch.cat([front, mask], dim=-1)


def _prefix_attention(implementation: str, module, query, key, value, attention_mask, **kwargs):
    original = _original(implementation, module)
    site = getattr(module, "bench_prefix", None)
    if site is None:
        return original(module, query, key, value, attention_mask, **kwargs)
    site.read = True
    batch, length = key.shape[0], site.bank.length
    pk, pv = (t.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1) for t in site.bank.keys_values(site.index))
    if site.gate is not None:
        gates = site.gate_values.to(key.dtype)
        pk, pv = pk * gates[:, 0, None, None, None], pv * gates[:, 1, None, None, None]
    causal = kwargs.pop("is_causal", None)
    causal = getattr(module, "is_causal", False) if causal is None else causal
    attention_mask = _open_mask(attention_mask, length, query.shape[2], key.shape[2], causal, key.device)
    if kwargs.get("position_bias") is not None:  # T5: prefixes have no relative position
        bias = kwargs["position_bias"]
        kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:-1], length), bias], dim=-1)
    key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
    return original(module, query, key, value, attention_mask, is_causal=False, **kwargs)


def _check_read(module, args, output):
    """A prefixed module whose forward never reached the attention wrapper ignored its prefix: some
    transformers versions compute an architecture's attention without the attention interface.
    Fail loudly instead of training a prefix that does nothing."""
    site = getattr(module, "bench_prefix", None)
    if site is not None and not site.read:
        import transformers

        raise Unsupported(f"{type(module).__name__} did not call the attention interface under transformers "
                          f"{transformers.__version__}, so its prefix would be ignored", environment=True)
    if site is not None:
        site.read = False


def _original(implementation: str, module):
    if implementation == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    return sys.modules[type(module).__module__].eager_attention_forward  # each modeling file defines it


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    for base, name in _WRAPPED.items():
        AttentionInterface.register(name, functools.partial(_prefix_attention, base))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


def attention_modules(model: nn.Module, arch: str) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, queries are decoder tokens) of every attention module, self and cross, in model order."""
    found = [(n, m, bool(getattr(m, "is_causal", False))) for n, m in sites.find(model, arch, "self_attention")]
    if "cross_attention" in ARCHS[arch].sites:
        found += [(n, m, True) for n, m in sites.find(model, arch, "cross_attention")]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(found, key=lambda entry: order[entry[0]])


def add_prefix(model: nn.Module, arch: str, length: int, mid_dim: int = 0, gated: bool = False) -> PrefixBank:
    """Give every attention module of `model` a prefix; returns the bank (registered on the model)."""
    implementation = model.config._attn_implementation
    if implementation not in _WRAPPED:
        raise Unsupported(f"in-house prefixes wrap the sdpa or eager attention, not '{implementation}'")
    attention = attention_modules(model, arch)
    kv_heads, head_dim = kv_shape(model.config, arch)
    hidden = getattr(model.config, "hidden_size", None) or model.config.d_model
    bank = sites.place_like(PrefixBank(len(attention), length, kv_heads, head_dim, hidden, mid_dim),
                            attention[0][1])
    model.add_module("bench_prefix_bank", bank)
    for index, (_, module, decoder_queries) in enumerate(attention):
        gate = None
        if gated:
            gate = sites.place_like(InputFreeGate() if decoder_queries else nn.Linear(hidden, 2), module)
            module.add_module("bench_prefix_gate", gate)
            module.register_forward_pre_hook(_stash_gate, with_kwargs=True)
        object.__setattr__(module, "bench_prefix", PrefixSite(bank, index, gate, decoder_queries))
        module.register_forward_hook(_check_read)
    _register()
    set_attention(model, _WRAPPED[implementation])
    return bank


def set_attention(model: nn.Module, name: str) -> None:
    """`set_attn_implementation` on the model and every submodel. transformers before 5.20 skips a submodel
    whose config has the top-level config's class, such as T5's encoder and decoder stacks (each holds a
    copy of the T5Config, which its attention modules read), so their attention never reached the wrapper."""
    from transformers import PreTrainedModel

    model.set_attn_implementation(name)
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel) and sub.config._attn_implementation != name:
            sub.set_attn_implementation(name)
