"""Closed-form parameter counts per architecture, from a config's dimensions alone.

Tests compare what bench counts (a model's total, a method's trainable share, `estimate`) with these. Nothing
here calls bench's own counting, so a wrong count in bench cannot agree with itself: the only inputs are
dimensions (bench/tiny.py's sizes, a shipped config's fields, a paper's numbers). Where a count is published,
its docstring says where.
"""

from __future__ import annotations

import math

from bench import tiny

# The tiny models' sizes (bench/tiny.py, set per architecture in bench/archs.py): one for every architecture.
H, L, F = tiny.WIDTH, tiny.DEPTH, tiny.FFN
KV = H // 2  # tiny LLaMA: 2 of its 4 heads for keys and values (grouped-query attention)
TINY_T5_BUCKETS, TINY_T5_HEADS = 32, tiny.HEADS  # T5Config's relative_attention_num_buckets default
ROBERTA_POSITIONS, ROBERTA_TYPES = 514, 1  # RoBERTa's own settings, which the tiny RoBERTa keeps
GPT2_POSITIONS = 512  # the tiny GPT-2's n_positions

# Totals of well-known checkpoints as their weights load (transformers' count; the model cards round them).
CHECKPOINT_TOTALS = {
    "llama-2-7b": 6_738_415_616, "llama-2-70b": 68_976_648_192, "llama-3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096, "gpt2": 124_439_808, "t5-base": 222_903_552,
}


def linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


# --- whole models ---------------------------------------------------------------------------------------------

def roberta_embeddings(hidden: int, vocab: int, positions: int = ROBERTA_POSITIONS, types: int = ROBERTA_TYPES) -> int:
    """Word, position and token-type embeddings, and their LayerNorm."""
    return (vocab + positions + types) * hidden + 2 * hidden


def roberta_layer(hidden: int, ffn: int) -> int:
    """q, k, v, o with biases, the attention LayerNorm, the two FFN projections and the output LayerNorm."""
    return 4 * linear(hidden, hidden) + 2 * hidden + linear(hidden, ffn) + linear(ffn, hidden) + 2 * hidden


def roberta_body(hidden: int, layers: int, ffn: int, vocab: int, positions: int = ROBERTA_POSITIONS,
                 types: int = ROBERTA_TYPES) -> int:
    """A RoBERTa encoder without its pooler or head."""
    return roberta_embeddings(hidden, vocab, positions, types) + layers * roberta_layer(hidden, ffn)


def roberta_classification_head(hidden: int, labels: int = 2) -> int:
    """RobertaClassificationHead: a dense layer on the first token, then out_proj to the labels."""
    return linear(hidden, hidden) + linear(hidden, labels)


def roberta_tensors(layers: int) -> int:
    """Parameter tensors of a RoBERTa body: embeddings 3 and their LayerNorm 2; per layer 6 linear layers
    (weight, bias) and 2 LayerNorms (weight, bias)."""
    return 5 + layers * 16


ROBERTA_HEAD_TENSORS = 4  # dense and out_proj, a weight and a bias each


def bert_pooler(hidden: int) -> int:
    return linear(hidden, hidden)


def gpt2_layer(hidden: int, ffn: int) -> int:
    """ln_1, the fused c_attn (q, k, v), the attention's c_proj, ln_2, the two MLP projections; all biased."""
    return (2 * hidden + linear(hidden, 3 * hidden) + linear(hidden, hidden) + 2 * hidden
            + linear(hidden, ffn) + linear(ffn, hidden))


def gpt2_total(hidden: int, layers: int, ffn: int, vocab: int, positions: int) -> int:
    """Word and position embeddings (the LM head is tied to the word embeddings), the blocks, ln_f."""
    return (vocab + positions) * hidden + layers * gpt2_layer(hidden, ffn) + 2 * hidden


def llama_layer(hidden: int, kv: int, ffn: int) -> int:
    """q and o (hidden²), k and v (hidden → kv, grouped-query attention), the gated FFN (gate, up, down) and
    2 RMS norms; no biases."""
    return 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn + 2 * hidden


def llama_total(hidden: int, layers: int, kv: int, ffn: int, vocab: int) -> int:
    """Embeddings, the layers, a final norm and an LM head of its own (not tied): LLaMA and Mistral.
    Mistral 7B v0.1's config gives 7,241,732,096 (CHECKPOINT_TOTALS)."""
    return vocab * hidden + layers * llama_layer(hidden, kv, ffn) + hidden + vocab * hidden


def t5_blocks(d: int, inner: int, ff: int, layers: int, decoder_layers: int, heads: int, buckets: int,
              gated: bool) -> int:
    """Every block of both stacks: per encoder block self-attention (q, k, v, o: d ↔ inner), an FFN (wi, wo;
    gated, v1.1: wi_0, wi_1, wo) and 2 RMS norms; per decoder block also cross-attention and a third norm; a
    relative position bias (buckets × heads) in each stack's first block. No biases."""
    attention, feedforward = 4 * d * inner, (3 if gated else 2) * d * ff
    encoder = layers * (attention + feedforward + 2 * d) + buckets * heads
    decoder = decoder_layers * (2 * attention + feedforward + 3 * d) + buckets * heads
    return encoder + decoder


def t5_total(d: int, inner: int, ff: int, layers: int, decoder_layers: int, heads: int, buckets: int, vocab: int,
             gated: bool, tied: bool) -> int:
    """Shared embeddings, both stacks' blocks, a final norm per stack, and an LM head of its own unless tied
    (v1.0 ties it; v1.1 and T0 do not: T0-3B 2,849,757,184 and T0 11,135,332,352 as their checkpoints load)."""
    head = 0 if tied else vocab * d
    return vocab * d + t5_blocks(d, inner, ff, layers, decoder_layers, heads, buckets, gated) + 2 * d + head


def t5_norms(d: int, layers: int, decoder_layers: int) -> int:
    """Every RMS norm's weight: 2 per encoder block, 3 per decoder block, a final one per stack."""
    return d * (2 * layers + 3 * decoder_layers + 2)


def attention_module_counts(arch: str, layers: int) -> dict[str, int]:
    """Self-attention modules (both of T5's stacks) and cross-attention modules (T5's decoder) of a model."""
    if arch == "t5":
        return {"self": 2 * layers, "cross": layers}
    return {"self": layers, "cross": 0}


# --- methods at any size --------------------------------------------------------------------------------------

def lora(projections: list[tuple[int, int]], r: int = 8) -> int:
    """LoRA's A (r × in) and B (out × r) on each adapted projection: r·(in + out) each (Hu et al. 2021)."""
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in projections)


def lora_q_v(hidden: int, layers: int, r: int = 8, kv: int | None = None) -> int:
    """LoRA on every layer's query (hidden → hidden) and value (hidden → kv) projections. RoBERTa-base (768, 12
    layers) at r = 8: 294,912, published as the LoRA paper's 0.3M (Hu et al. 2021, Table 2); LLaMA-2-7B (4096,
    32 layers) at r = 8: 4,194,304."""
    return layers * lora([(hidden, hidden), (hidden, hidden if kv is None else kv)], r)


def lora_q_v_tensors(layers: int) -> int:
    """lora_A and lora_B per adapted query and value projection."""
    return layers * 2 * 2


def bitfit(hidden: int, layers: int, ffn: int) -> int:
    """Every bias of a RoBERTa/BERT encoder or a GPT-2 decoder: per layer q, k, v, o (or c_attn and c_proj:
    7·hidden with the 2 LayerNorms and the FFN's output) and the FFN's input (ffn), plus the embeddings' (or
    ln_f's) LayerNorm. RoBERTa-base: 102,144."""
    return hidden + layers * (7 * hidden + ffn)


def t5_bitfit(d: int, ff: int, layers: int, decoder_layers: int, gated: bool) -> int:
    """T5 has no biases: BitFit adds zero ones (T-Few, Liu et al. 2022) on q, k, v, o of every attention and on a
    gated FFN's wi_0 and wi_1. T0-3B (2048, 5120, 24 + 24 blocks) gives 1,081,344."""
    gates = 2 * ff if gated else 0
    return layers * (4 * d + gates) + decoder_layers * (8 * d + gates)


def bottleneck(dim: int, width: int) -> int:
    """An adapter: down (dim → width) and up (width → dim) projections with biases."""
    return linear(dim, width) + linear(width, dim)


def phm_linear(fan_in: int, fan_out: int, n: int = 4, rank: int = 1, own_rule: bool = True) -> int:
    """A PHM layer (Compacter, Karimi Mahabadi et al. 2021): n rank-`rank` weight factors s (fan_in/n × rank) and
    t (rank × fan_out/n), a bias, and its own n × n × n rule unless the rules are shared."""
    return (n ** 3 if own_rule else 0) + n * (fan_in // n) * rank + n * rank * (fan_out // n) + fan_out


def phm_adapter(dim: int, width: int, own_rules: bool) -> int:
    """Compacter's adapter: PHM layers down (dim → width) and up (width → dim); Compacter++ per FFN with a rule
    per layer is T-Few's: T0-3B's 48 FFNs at width 64 and its 122 norms give 560,128."""
    return phm_linear(dim, width, own_rule=own_rules) + phm_linear(width, dim, own_rule=own_rules)


def input_prompts(d_model: int, length: int, stacks: int) -> int:
    """Prompt tuning's trainable embeddings: `length` of width d_model in front of each prompted stack's input.
    T-Few's (encoder and decoder, 10 each) on T0-3B (d_model 2048): 40,960."""
    return stacks * length * d_model


def lokr(fan_in: int, fan_out: int) -> int:
    """LoKr's two Kronecker factors of a projection, each split as peft splits it."""
    def split(n):  # peft's factorization(n, -1): the factor pair closest to sqrt(n), smaller first
        m = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
        return m, n // m
    (out_small, out_large), (in_small, in_large) = split(fan_out), split(fan_in)
    return out_small * in_small + out_large * in_large


def oft(fan_in: int, block_size: int = 0, blocks: int = 0) -> int:
    """OFT's parameters on a projection: `blocks` skew-symmetric blocks of block_size × block_size, each stored as
    its block_size·(block_size − 1)/2 entries above the diagonal (one of block_size and blocks given, the other
    fan_in / it)."""
    block_size, blocks = (block_size, fan_in // block_size) if block_size else (fan_in // blocks, blocks)
    return blocks * block_size * (block_size - 1) // 2


def boft(fan_in: int, fan_out: int, block_size: int = 0, block_num: int = 0, butterfly: int = 1) -> int:
    """BOFT's parameters on a projection: `butterfly` factors of block_num skew blocks of block_size × block_size
    each (one of block_size and block_num given, the other fan_in / it), and one output scale per output. peft
    builds `butterfly` factors only where its CUDA extension loads; without it, one (its warning: "Setting
    boft_n_butterfly_factor to 1")."""
    block_size, block_num = (block_size, fan_in // block_size) if block_size else (fan_in // block_num, block_num)
    return butterfly * block_num * block_size ** 2 + fan_out


# --- the tiny models -------------------------------------------------------------------------------------------

TINY_HEAD = roberta_classification_head(H)  # the tiny encoder's 2-label head, which every trained method trains


def tiny_lora_targets(arch: str) -> list[tuple[int, int, int]]:
    """(in, out, adapted modules) of each projection LoRA-style methods target: q and v (T5's serve encoder
    self-, decoder self- and cross-attention; GPT-2's fused c_attn is one target; LLaMA's v projects to KV)."""
    return {"roberta": [(H, H, L)] * 2, "t5": [(H, H, 3 * L)] * 2, "gpt2": [(H, 3 * H, L)],
            "llama": [(H, H, L), (H, KV, L)]}[arch]


def tiny_adapted_projections(arch: str) -> list[tuple[int, int]]:
    """(in, out) of every module LoRA-style methods adapt."""
    return [(fan_in, fan_out) for fan_in, fan_out, modules in tiny_lora_targets(arch) for _ in range(modules)]


def tiny_layer_params(arch: str) -> int:
    """Parameters inside the transformer layers (what Child-Tuning selects from)."""
    return {"roberta": L * roberta_layer(H, F), "t5": t5_blocks(H, H, F, L, L, TINY_T5_HEADS, TINY_T5_BUCKETS, False),
            "gpt2": L * gpt2_layer(H, F), "llama": L * llama_layer(H, KV, F)}[arch]


def tiny_body_params(arch: str, vocab: int) -> int:
    """Every parameter of the tiny model but a classification head."""
    return {"roberta": roberta_body(H, L, F, vocab),
            "t5": t5_total(H, H, F, L, L, TINY_T5_HEADS, TINY_T5_BUCKETS, vocab, gated=False, tied=True),
            "gpt2": gpt2_total(H, L, F, vocab, GPT2_POSITIONS), "llama": llama_total(H, L, KV, F, vocab)}[arch]


def tiny_norms(arch: str) -> int:
    """Every LayerNorm / RMSNorm parameter of the body."""
    return {"roberta": 2 * H + L * 4 * H, "t5": t5_norms(H, L, L), "gpt2": L * 4 * H + 2 * H,
            "llama": 2 * L * H + H}[arch]


def tiny_prefix_bank(arch: str, length: int, mid: int) -> int:
    """Embedding + MLP of an in-house prefix bank covering every attention module."""
    width = sum(attention_module_counts(arch, L).values()) * 2 * (KV if arch == "llama" else H)
    return length * H + linear(H, mid) + linear(mid, width)


def hyperformer(dim: int, stacks: list[int], n_tasks: int, reduction: int = 32, embedding: int = 64,
                projected: int = 64, hidden: int = 128) -> int:
    """HyperFormer++ (its reference's hyperformer++.json): the task embeddings once, and
    per stack of `layers` layers its layer-id and block-type embeddings, the code MLP and its layer norm, and the
    generators of the adapter's down/up weights and biases and of its layer norm's weight and bias."""
    width = dim // reduction
    tasks = n_tasks * embedding
    generated = 2 * dim * width + width + 3 * dim  # down (b × d) + b, up (d × b) + d, the norm's weight and bias
    per_stack = (2 * embedding + linear(3 * embedding, hidden) + linear(hidden, projected)
                 + 2 * projected + linear(projected, generated))
    return tasks + sum(layers * embedding + per_stack for layers in stacks)


def tiny_propetl(method: str, arch: str) -> tuple[int, list[int]]:
    """ProPETL (Zeng et al. 2023): (prototype elements, the size of every mask: one per prototype matrix per
    adapted module). The adapter's bottleneck is H // 12 (reduction 12), the LoRA prototype's rank 32."""
    if method == "propetl-adapter":
        width, ffn_sites = H // 12, attention_module_counts(arch, L)["self"]  # one adapter per FFN block
        return bottleneck(H, width), [H * width] * 2 * ffn_sites
    targets = tiny_lora_targets(arch)
    return (lora([(fan_in, fan_out) for fan_in, fan_out, _ in targets], r=32),
            [n for fan_in, fan_out, modules in targets for n in (32 * fan_in, 32 * fan_out) for _ in range(modules)])


def tiny_trainable(method: str, arch: str, vocab: int) -> int:
    """Trainable parameters of a method at its registry defaults on the tiny model, task head excluded."""
    projections = tiny_adapted_projections(arch)
    attn = attention_module_counts(arch, L)["self"]
    ffn = attn  # one FFN per block
    peft_token_dim = KV if arch == "llama" else H
    norms = tiny_norms(arch)
    body, layers = tiny_body_params(arch, vocab), tiny_layer_params(arch)
    propetl = {name: tiny_propetl(name, arch) for name in ("propetl-adapter", "propetl-lora")}
    table = {
        "full": body,
        "head-only": vocab * H if arch == "llama" else 0,
        "adapter-houlsby": (attn + ffn) * bottleneck(H, H // 16) + norms,  # Houlsby et al. train the norms
        "adapter-pfeiffer": ffn * bottleneck(H, H // 16),
        "adapter-parallel": ffn * bottleneck(H, H // 16),
        "madx": ffn * bottleneck(H, H // 16),  # the task adapter; the language adapter and invertible one are frozen
        "prompt-tuning": 20 * H,
        "prompt-tuning-tfew": input_prompts(H, 10, stacks=2),
        "prefix-tuning": tiny_prefix_bank(arch, 20, 512),
        # peft: an embedding of the key/value width, an MLP to 2 keys/values per decoder layer
        "prefix-tuning-peft": 20 * peft_token_dim + linear(peft_token_dim, 512) + linear(512, L * 2 * peft_token_dim),
        "p-tuning": 20 * H + linear(H, 128) + linear(128, 128) + linear(128, H),
        "ia3": {"roberta": L * (H + H + F), "t5": L * (2 * H + F) + L * (4 * H + F),
                "gpt2": L * (3 * H + F), "llama": L * (2 * KV + F)}[arch],
        # T5 and LLaMA have no biases: zero ones are added to their projections (T-Few), T5's on q, k, v, o of
        # every attention (the tiny T5's FFN is not gated: no wi_0, wi_1), LLaMA's on all seven
        "bitfit": {"roberta": bitfit(H, L, F), "gpt2": bitfit(H, L, F), "t5": t5_bitfit(H, F, L, L, gated=False),
                   "llama": L * (3 * H + 2 * KV + 2 * F)}[arch],
        "ln-tuning": norms,
        "fishmask": round(0.005 * body),
        # the Fisher-selected 30 % of the layers, and everything outside the layers in full
        "child-tuning": round(0.3 * layers) + body - layers,
        "lora": lora(projections),
        "rslora": lora(projections),
        "pissa": lora(projections),
        "dora": lora(projections) + sum(fan_out for _, fan_out in projections),  # a magnitude per output
        "adalora": lora(projections, r=12) + 12 * len(projections),  # r = 12 and a singular value per rank
        "vera": sum(256 + fan_out for _, fan_out in projections),
        "loha": 2 * lora(projections),
        # 4 LoRA skills of rank 8 per projection, and a router row (one task, one split, 4 skills)
        # T5: a hypernetwork per stack; the layer norms train too (the reference's unfreeze_layer_norms)
        "hyperformer": hyperformer(H, [L, L] if arch == "t5" else [L], n_tasks=1) + norms,
        "poly": sum(4 * 8 * (fan_in + fan_out) + 1 * 1 * 4 for fan_in, fan_out in projections),
        "lokr": sum(lokr(fan_in, fan_out) for fan_in, fan_out in projections),
        "oft": sum(oft(fan_in, block_size=32) for fan_in, _ in projections),
        "boft": sum(boft(fan_in, fan_out, block_size=4) for fan_in, fan_out in projections),
        "fourierft": 1000 * len(projections),
        "mam-adapter": tiny_prefix_bank(arch, 30, 800) + ffn * bottleneck(H, 512),
        "unipelt": lora(projections) + sum(fan_in + 1 for fan_in, _ in projections) + tiny_prefix_bank(arch, 10, 512)
        # a prefix gate reads its input (2 × H weights) in bidirectional self-attention only: decoder tokens'
        # queries (causal self-attention, cross-attention) get an input-free gate, 2 logits
        + {"roberta": L, "t5": L, "gpt2": 0, "llama": 0}[arch] * 2 * H
        + sum(attention_module_counts(arch, L).values()) * 2
        + ffn * (bottleneck(H, H // 16) + H + 1),
        "compacter": (attn + ffn) * phm_adapter(H, H // 16, own_rules=False) + 4 ** 3,
        "compacter-pp": ffn * phm_adapter(H, H // 16, own_rules=True) + norms,
        # one shared prototype + a float score per mask entry per layer
        **{name: prototype + sum(masks) for name, (prototype, masks) in propetl.items()},
    }
    return table[method]


def poly_mixture_flops(projections: list[tuple[int, int]], rows: int, skills: int, r: int = 8) -> dict[str, int]:
    """FLOPs Poly (Ponti et al. 2023) spends beyond a LoRA of its rank on the same projections: per row, the skills'
    A (in × r each) and B (r × out each) mixed by the row's router weights, 2·skills·r·(in + out) multiply-adds
    forward, whatever the row's length or the splits; backward twice that (the gradients of the weights and of the
    skills). The router (indexing its logits, the relaxed-Bernoulli draw, the normalisation) is elementwise: 0
    FLOPs as the harness counts them (matrix products and attention only)."""
    forward = rows * sum(2 * skills * r * (fan_in + fan_out) for fan_in, fan_out in projections)
    return {"forward": forward, "train": 3 * forward}
