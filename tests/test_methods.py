"""The method matrix: every registry method × tiny encoder, encoder-decoder and decoders.

For each pair: the method applies (or is unsupported for a declared reason); a forward/backward step
runs; every trainable parameter gets a gradient; an optimizer step changes nothing frozen; the
trainable count equals a closed form computed here from the model dimensions; storing and loading
into a fresh model reproduces the outputs; mergeable methods give the same outputs merged.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from packaging.version import Version

from bench import methods, tiny
from bench.cell.batching import batches, collate
from bench.cell.train import optimizer_for
from bench.config import TrainConfig
from bench.errors import Unsupported
from bench.methods.prefix_state import FOLDED
from bench.methods.base import ApplyContext
from bench.models import REGISTRY, load_bundle
from bench.tasks.registry import builtin_tasks
from bench.tasks.data import load_rows
from bench.tasks.features import train_features
from tests.adapting import adapt

MODELS = {"tiny-encoder": "synth-polarity", "tiny-t5": "synth-digits", "tiny-gpt2": "synth-digits",
          "tiny-llama": "synth-digits"}
# Settings that keep the matrix fast; everything else is the registry default.
FAST = {"fishmask": {"fisher_samples": 16}, "child-tuning": {"fisher_batches": 2}}
H, L, F = tiny.WIDTH, tiny.DEPTH, tiny.FFN
KV = H // 2  # tiny LLaMA: 2 of 4 heads for keys/values
HEAD = (H * H + H) + (H * 2 + 2)  # RoBERTa classification head, 2 labels


def qv(arch) -> list[tuple[int, int]]:
    """(in, out) of every module LoRA-style methods adapt: q and v projections (GPT-2: fused c_attn)."""
    return {"roberta": [(H, H), (H, H)] * L, "t5": [(H, H), (H, H)] * 3 * L,  # T5: self + cross attention
            "gpt2": [(H, 3 * H)] * L, "llama": [(H, H), (H, KV)] * L}[arch]


def layer_params(arch) -> int:
    """Parameters inside the transformer layers (what Child-Tuning selects from)."""
    return {"roberta": L * (4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H),
            # T5 encoder block: attention, FFN, 2 norms; decoder block: 2 attentions, FFN, 3 norms;
            # a relative position bias (32 buckets × 4 heads) in the first block of each stack
            "t5": L * (4 * H * H + 2 * H * F + 2 * H) + L * (8 * H * H + 2 * H * F + 3 * H) + 2 * 32 * 4,
            "gpt2": L * (4 * H + (H * 3 * H + 3 * H) + (H * H + H) + (H * F + F) + (F * H + H)),
            "llama": L * (2 * H * H + 2 * H * KV + 3 * H * F + 2 * H)}[arch]


def body_params(arch, vocab) -> int:
    """Every parameter of the tiny model but a classification head."""
    outside = {"roberta": (vocab + 514 + 1) * H + 2 * H,  # embeddings (word, position, type) + LayerNorm
               "t5": vocab * H + 2 * H,  # shared embedding (tied LM head) + 2 final norms
               "gpt2": (vocab + 512) * H + 2 * H,  # word + position embeddings (tied LM head) + ln_f
               "llama": vocab * H + H + vocab * H}[arch]  # embeddings, final norm, untied LM head
    return outside + layer_params(arch)


def bottleneck(dim, width) -> int:
    return dim * width + width + width * dim + dim


def prefixed_attention(arch) -> int:
    """Attention modules an in-house prefix covers: every self-attention, and T5's cross-attention."""
    return 3 * L if arch == "t5" else L


def prefix_bank(arch, length, mid) -> int:
    """Embedding + MLP of an in-house prefix bank covering every attention module."""
    modules = prefixed_attention(arch)
    width = modules * 2 * (KV if arch == "llama" else H)
    return length * H + (H * mid + mid) + (mid * width + width)


def lokr(i, o) -> int:
    def split(n):  # peft's factorization(n, -1): the factor pair closest to sqrt(n), smaller first
        m = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
        return m, n // m
    (om, on), (im, in_) = split(o), split(i)
    return om * im + on * in_


def expected_trainable(method: str, arch: str, vocab: int) -> int:
    """Trainable parameters, task head excluded, from the dimensions alone."""
    mods = qv(arch)
    attn = {"roberta": L, "t5": 2 * L, "gpt2": L, "llama": L}[arch]  # self-attention modules
    ffn = attn  # one FFN per block
    peft_token_dim = KV if arch == "llama" else H
    norms = {"roberta": 2 * H + L * 4 * H, "t5": H * (2 * L + 1 + 3 * L + 1), "gpt2": L * 4 * H + 2 * H,
             "llama": 2 * L * H + H}[arch]  # every LayerNorm / RMSNorm of the body
    table = {
        "full": body_params(arch, vocab),
        "head-only": vocab * H if arch == "llama" else 0,
        "adapter-houlsby": (attn + ffn) * bottleneck(H, H // 16) + norms,  # Houlsby et al. train the norms
        "adapter-pfeiffer": ffn * bottleneck(H, H // 16),
        "adapter-parallel": ffn * bottleneck(H, H // 16),
        "prompt-tuning": 20 * H,
        "prefix-tuning": prefix_bank(arch, 20, 512),
        # peft: an embedding of the key/value width, an MLP to 2 keys/values per decoder layer
        "prefix-tuning-peft": 20 * peft_token_dim + (peft_token_dim * 512 + 512) + (512 + 1) * L * 2 * peft_token_dim,
        "p-tuning": 20 * H + (H * 128 + 128) + (128 * 128 + 128) + (128 * H + H),
        "ia3": {"roberta": L * (H + H + F), "t5": L * (2 * H + F) + L * (4 * H + F),
                "gpt2": L * (3 * H + F), "llama": L * (2 * KV + F)}[arch],
        # T5 and LLaMA have no biases: zero ones are added to their projections (T-Few), T5's on q, k, v, o of
        # every attention (the tiny T5's FFN is not gated: no wi_0, wi_1), LLaMA's on all seven
        "bitfit": {"roberta": H + L * (7 * H + F), "gpt2": H + L * (7 * H + F), "t5": 12 * L * H,
                   "llama": L * (3 * H + 2 * KV + 2 * F)}[arch],
        "ln-tuning": norms,
        "fishmask": round(0.005 * body_params(arch, vocab)),
        # the Fisher-selected 30 % of the layers, and everything outside the layers in full
        "child-tuning": round(0.3 * layer_params(arch)) + body_params(arch, vocab) - layer_params(arch),
        "lora": sum(8 * (i + o) for i, o in mods),
        "rslora": sum(8 * (i + o) for i, o in mods),
        "pissa": sum(8 * (i + o) for i, o in mods),
        "dora": sum(8 * (i + o) + o for i, o in mods),
        "adalora": sum(12 * (i + o + 1) for i, o in mods),
        "vera": sum(256 + o for i, o in mods),
        "loha": sum(2 * 8 * (i + o) for i, o in mods),
        "lokr": sum(lokr(i, o) for i, o in mods),
        "oft": sum((i // 32) * 32 * 31 // 2 for i, o in mods),
        "boft": sum(i * 4 + o for i, o in mods),
        "fourierft": 1000 * len(mods),
        "mam-adapter": prefix_bank(arch, 30, 800) + ffn * bottleneck(H, 512),
        "unipelt": sum(8 * (i + o) + i + 1 for i, o in mods) + prefix_bank(arch, 10, 512)
        # a prefix gate reads its input (2 × H weights) in bidirectional self-attention only: decoder tokens'
        # queries (causal self-attention, cross-attention) get an input-free gate, 2 logits
        + {"roberta": L, "t5": L, "gpt2": 0, "llama": 0}[arch] * 2 * H + prefixed_attention(arch) * 2
        + ffn * (bottleneck(H, H // 16) + H + 1),
        "compacter": (attn + ffn) * (3 * H + 3 * 4) + 4 ** 3,
        # a rule of its own per PHM layer (4³ each), down H→4 and up 4→H with rank-1 parts and biases
        "compacter-pp": ffn * (3 * H + 3 * 4 + 2 * 4 ** 3) + norms,
        # one shared prototype (adapter: reduction 12; LoRA: r = 32 per target) + a float score per mask entry per layer
        "propetl-adapter": bottleneck(H, H // 12) + ffn * 2 * H * (H // 12),
        "propetl-lora": sum(32 * (i + o) for i, o in mods[: 1 if arch == "gpt2" else 2])
        + sum(32 * (i + o) for i, o in mods),
    }
    return table[method]


# (method, architecture) pairs that cannot work, with a word the reason must contain.
UNSUPPORTED = {
    ("head-only", "t5"): "tied", ("head-only", "gpt2"): "tied", ("icl", "roberta"): "text-to-text",
    **{(m, "gpt2"): "Conv1D" for m in ("loha", "lokr", "oft", "boft", "qlora")},
    # it loads a saved adapter, so it needs a path (tests/test_eval_adapter.py runs it with one)
    **{("external-adapter", a): "--adapter" for a in ("roberta", "t5", "gpt2", "llama")},
}
if not torch.cuda.is_available():  # QLoRA quantises on the GPU: unsupported only where there is none
    UNSUPPORTED.update({("qlora", a): "CUDA" for a in ("roberta", "t5", "llama")})
if Version(transformers.__version__) >= Version("5.24"):  # peft can no longer pass encoders past keys/values
    UNSUPPORTED[("prefix-tuning-peft", "roberta")] = "past key values"


def fresh(model_name: str, method: str):
    task = builtin_tasks()[MODELS[model_name]]
    bundle = load_bundle(REGISTRY[model_name], task.type, task.num_labels, seed=0)
    rows = load_rows(task, "train")[:64]
    feats = train_features(task, bundle, rows, 32)

    def calibration(n):
        data = batches(feats, 8, 0)
        return [collate(next(data), bundle.tokenizer.pad_token_id) for _ in range(n)]

    m = methods.get(method)
    device = "cuda" if method == "qlora" and torch.cuda.is_available() else "cpu"  # QLoRA's base lives on the GPU
    bundle.model.to(device)
    config = m.resolve(FAST.get(method, {}), bundle.arch, lambda k: k)
    adapted = m.apply(bundle.model, config, ApplyContext(bundle, TrainConfig(batch_size=8), 10, calibration, device,
                                                         task, rows[:4]))
    adapted.model.to(device)
    batch = {k: v.to(device) for k, v in collate(feats[:4], bundle.tokenizer.pad_token_id).items()}
    return bundle, adapted, batch


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", list(methods.REGISTRY))
def test_method_matrix(method, model_name):
    torch.manual_seed(0)
    arch = REGISTRY[model_name].arch
    try:
        bundle, adapted, batch = fresh(model_name, method)
    except Unsupported as e:
        assert (method, arch) in UNSUPPORTED, f"unexpectedly unsupported: {e}"
        assert UNSUPPORTED[(method, arch)] in str(e)
        return
    assert (method, arch) not in UNSUPPORTED, "expected to be unsupported"
    model = adapted.model
    if not adapted.trains:  # zero-shot: nothing may train
        assert adapted.params()["trainable"] == 0
        return
    head = HEAD if bundle.head_modules else 0
    counts = adapted.params()
    if method != "qlora":  # no closed form yet for peft's all-linear choice on a quantised model (GPU only)
        assert counts["trainable"] - head == expected_trainable(method, arch, len(bundle.tokenizer))

    # a training step: gradients reach exactly the trainable tensors, and nothing frozen moves
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model(**batch).loss.backward()
    for hook in adapted.after_backward:
        hook(0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    optimizer_for(model, TrainConfig(lr=1e-2, weight_decay=0.1), {id(p) for p, _ in adapted.grad_masks}).step()
    masks = {id(p): m for p, m in adapted.grad_masks}
    changed = 0
    for name, p in model.named_parameters():
        moved = p.detach() != before[name]
        if name not in trainable:
            assert not moved.any(), f"frozen {name} changed"
        elif id(p) in masks:
            assert not moved[~masks[id(p)]].any(), f"masked-out entries of {name} changed"
        changed += int(moved.sum())
    assert changed > 0

    # stored state -> a fresh model with the method applied -> the same outputs
    trained = logits(model, batch)
    state = {k: v.clone() for k, v in adapted.state_to_store().items()}
    torch.manual_seed(1)  # a different init for anything the method creates
    _, again, _ = fresh(model_name, method)
    again.load_state(state)
    torch.testing.assert_close(logits(again.model, batch), trained, rtol=1e-5, atol=1e-5)

    if methods.get(method).mergeable:  # in float64, so float32 round-off cannot hide a wrong merge
        assert adapted.merge is not None
        model.double()
        unmerged = logits(model, batch)
        torch.testing.assert_close(logits(adapted.merge(), batch), unmerged, rtol=1e-5, atol=1e-9)


def test_known_counts_on_roberta_base_without_weights():
    """From the roberta-base config on the meta device: LoRA r=8 on q,v and BitFit, head excluded."""
    for method, expected in (("lora", 294_912), ("bitfit", 102_144)):
        bundle = load_bundle(REGISTRY["roberta-base"], "classification", 2, seed=0, meta=True)
        m = methods.get(method)
        adapted = m.apply(bundle.model, m.resolve({}, "roberta", lambda k: k),
                          ApplyContext(bundle, TrainConfig(), 10))
        head = 768 * 768 + 768 + 768 * 2 + 2
        assert adapted.params()["trainable"] - head == expected


def test_every_method_is_declared_fully():
    for m in methods.REGISTRY.values():
        assert m.family in methods.FAMILIES and m.paper and m.description
        for arch in ("roberta", "bert", "t5", "gpt2", "llama"):
            if m.target_keys and arch not in m.unsupported:
                assert arch in m.targets, f"{m.name} declares no targets for {arch}"


def test_composition_trains_the_union_of_its_parts():
    from bench.methods.compose import apply_composition

    task = builtin_tasks()["synth-polarity"]
    bundle = load_bundle(REGISTRY["tiny-encoder"], task.type, 2, seed=0)
    parts = [{"name": n, "config": methods.get(n).resolve({}, "roberta", lambda k: k)}
             for n in ("prefix-tuning", "adapter-parallel")]
    adapted = apply_composition(parts, bundle.model, ApplyContext(bundle, TrainConfig(), 10))
    prefix = expected_trainable("prefix-tuning", "roberta", len(bundle.tokenizer))
    parallel = expected_trainable("adapter-parallel", "roberta", len(bundle.tokenizer))
    assert adapted.params()["trainable"] == prefix + parallel + HEAD
    feats = train_features(task, bundle, load_rows(task, "train")[:4], 32)
    adapted.model(**collate(feats, 0)).loss.backward()
    assert all(p.grad is not None for p in adapted.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_name,task_name", [("tiny-encoder", "synth-polarity"),
                                                  ("tiny-llama", "synth-intensity")])  # a decoder's head: regression
@pytest.mark.parametrize("parts", [("bitfit", "lora"), ("lora", "bitfit"), ("adapter-pfeiffer", "lora"),
                                   ("prefix-tuning", "ia3")])
def test_a_composition_with_peft_trains_the_head_copy_not_the_original(parts, model_name, task_name):
    """peft trains a copy of the task head and never reads the original: an in-house part before it (which
    trains the original head) or BitFit after it (its biases) must not leave the original trainable, where
    it would be counted, stored and never given a gradient (a cell would fail with NoGradient)."""
    from bench.methods.compose import apply_composition

    task = builtin_tasks()[task_name]
    bundle = load_bundle(REGISTRY[model_name], task.type, task.num_labels, seed=0)
    config = [{"name": n, "config": methods.get(n).resolve({}, bundle.arch, str)} for n in parts]
    adapted = apply_composition(config, bundle.model, ApplyContext(bundle, TrainConfig(), 10))
    trainable = {n: p for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert not [n for n in trainable if ".original_module." in n]
    assert any(head in n for n in trainable for head in bundle.head_modules)  # the head trains
    feats = train_features(task, bundle, load_rows(task, "train")[:4], 32)
    adapted.model(**collate(feats, bundle.tokenizer.pad_token_id)).loss.backward()
    assert [n for n, p in trainable.items() if p.grad is None] == []


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning"])
def test_soft_prompts_on_an_encoder_decoder_classifier_head_are_unsupported_before_training(method):
    """T5ForSequenceClassification raises NotImplementedError for input embeddings, which is how peft passes a
    soft prompt (regression gives T5 a classifier head): the cell is `unsupported` with the reason, where it
    was `failed` at its first step."""
    from bench.errors import Unsupported

    task = builtin_tasks()["synth-intensity"]
    bundle = load_bundle(REGISTRY["tiny-t5"], task.type, task.num_labels, seed=0)
    chosen = methods.get(method)
    with pytest.raises(Unsupported, match="takes no input embeddings"):
        chosen.apply(bundle.model, chosen.resolve({}, bundle.arch, str), ApplyContext(bundle, TrainConfig(), 10))


def test_docs_list_every_method():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
    for name, m in methods.REGISTRY.items():
        assert f"| `{name}` | {m.family} |" in text, f"docs/methods.md lacks {name}"


@pytest.mark.parametrize("parts", [("prefix-tuning", "adapter-parallel"), ("fishmask", "adapter-pfeiffer")])
def test_composition_keeps_what_its_parts_declare(parts):
    from bench.methods.compose import apply_composition

    task = builtin_tasks()["synth-polarity"]

    def build():
        bundle = load_bundle(REGISTRY["tiny-encoder"], task.type, 2, seed=0)
        feats = train_features(task, bundle, load_rows(task, "train")[:32], 32)
        calibration = lambda n: [collate(feats[8 * i: 8 * i + 8], 0) for i in range(n)]  # noqa: E731
        config = [{"name": n, "config": methods.get(n).resolve(FAST.get(n, {}), "roberta", str)} for n in parts]
        return apply_composition(config, bundle.model, ApplyContext(bundle, TrainConfig(), 10, calibration)), feats

    adapted, feats = build()
    vocab = len(load_bundle(REGISTRY["tiny-encoder"], task.type, 2, seed=0).tokenizer)
    expected = sum(expected_trainable(p, "roberta", vocab) for p in parts)
    assert adapted.params()["trainable"] == expected + HEAD
    batch = collate(feats[:4], 0)
    adapted.model.train()
    adapted.model(**batch).loss.backward()
    for hook in adapted.after_backward:
        hook(0)
    optimizer_for(adapted.model, TrainConfig(lr=1e-2, weight_decay=0.1), {id(p) for p, _ in adapted.grad_masks}).step()
    for p, mask in adapted.grad_masks:  # (fishmask) masked-out entries were not trained
        assert p.grad is None or not p.grad[~mask].any()
    state = adapted.state_to_store()
    if "prefix-tuning" in parts:  # the prefix is stored folded, not as its MLP
        assert any(k == f"part0/{FOLDED}" for k in state)
        assert not any(".mlp." in k or "embedding" in k for k in state)
    if "fishmask" in parts:  # a sparse update, not dense tensors
        assert any(k.endswith(".indices") for k in state)
    trained = logits(adapted.model, batch)
    torch.manual_seed(1)
    again, _ = build()
    again.load_state({k: v.clone() for k, v in state.items()})
    torch.testing.assert_close(logits(again.model, batch), trained, rtol=1e-5, atol=1e-5)


def test_bitfit_added_biases_change_nothing_until_trained_and_count_as_t_few_adds_them():
    """On T5 the added biases start at zero (the same outputs as the base model); on T0-3B they are T-Few's
    q, k, v, o and wi_0, wi_1 biases: (4·2048 + 2·5120)·24 in the encoder, (8·2048 + 2·5120)·24 in the decoder."""
    from bench.tools.estimate import estimate

    bundle, adapted = adapt("tiny-t5", "bitfit", total_steps=1)
    base = load_bundle(bundle.spec, "generation", None, seed=0).model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(adapted.model.eval()(input_ids=ids, decoder_input_ids=ids).logits,
                           base(input_ids=ids, decoder_input_ids=ids).logits)
    t0 = estimate("t0-3b", "bitfit", batch_size=1, seq_len=8)["params"]
    assert t0["trainable"] == t0["method"] == (4 * 2048 + 2 * 5120) * 24 + (8 * 2048 + 2 * 5120) * 24 == 1_081_344


def test_compacter_pp_counts_on_t0_3b_as_t_few_configures_it():
    """T-Few's Compacter++ on T0-3B (d_model 2048, 24 + 24 blocks): after each of the 48 FFNs a PHM adapter
    2048 → 64 → 2048 with n = 4, rank 1 and a 4×4×4 rule per PHM layer; plus the 122 layer norms (2 per
    encoder block, 3 per decoder block, 2 final), 2048 weights each."""
    from bench.tools.estimate import estimate

    down = 4 ** 3 + 4 * (2048 // 4) * 1 + 4 * 1 * (64 // 4) + 64
    up = 4 ** 3 + 4 * (64 // 4) * 1 + 4 * 1 * (2048 // 4) + 2048
    norms = (2 * 24 + 3 * 24 + 2) * 2048
    t0 = estimate("t0-3b", "compacter-pp", batch_size=1, seq_len=8)["params"]
    assert t0["trainable"] == t0["method"] == 48 * (down + up) + norms == 560_128
