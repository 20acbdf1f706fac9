"""The method matrix: every registry method × tiny encoder, encoder-decoder and decoders.

For each pair: the method applies (or is unsupported for a declared reason); a forward/backward step
runs; every trainable parameter gets a gradient; an optimizer step changes nothing frozen; the
trainable count equals a closed form from the model dimensions (tests/closed_forms.py); storing and loading
into a fresh model reproduces the outputs; mergeable methods give the same outputs merged.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version

from bench import methods
from bench.cell.batching import batches, collate
from bench.cell.train import optimizer_for
from bench.config import TrainConfig
from bench.errors import Unsupported
from bench.methods.base import ApplyContext
from bench.methods.prefix_state import FOLDED
from bench.models import REGISTRY
from bench.tasks.data import load_rows
from bench.tasks.features import train_features
from bench.tasks.registry import builtin_tasks
from tests import closed_forms
from tests.adapting import adapt, build_bundle, calibration_of

MODELS = {"tiny-encoder": "synth-polarity", "tiny-t5": "synth-digits", "tiny-gpt2": "synth-digits",
          "tiny-llama": "synth-digits"}
# Settings that keep the matrix fast; everything else is the registry default.
FAST = {"fishmask": {"fisher_samples": 16}, "child-tuning": {"fisher_batches": 2}}
# (method, architecture) pairs that cannot work, with a word the reason must contain.
UNSUPPORTED = {
    ("head-only", "t5"): "tied", ("head-only", "gpt2"): "tied", ("icl", "roberta"): "text-to-text",
    **{(m, "gpt2"): "Conv1D" for m in ("loha", "lokr", "oft", "boft", "qlora", "poly")},
    # it loads a saved adapter, so it needs a path (tests/test_eval_adapter.py runs it with one)
    **{("external-adapter", a): "--adapter" for a in ("roberta", "t5", "gpt2", "llama")},
    # it composes adapters that stage cells saved (tests/test_fusion.py runs it with them)
    **{("adapter-fusion", a): "saved adapters" for a in ("roberta", "t5", "gpt2", "llama")},
    **{("prompt-tuning-tfew", a): "encoder-decoder" for a in ("roberta", "gpt2", "llama")},  # T-Few's: T5 only
    **{("madx", a): "encoders" for a in ("t5", "gpt2", "llama")},  # MAD-X's invertible adapter: an encoder's
}
if not torch.cuda.is_available():  # QLoRA quantises on the GPU: unsupported only where there is none
    UNSUPPORTED.update({("qlora", a): "CUDA" for a in ("roberta", "t5", "llama")})
if Version(transformers.__version__) >= Version("5.24"):  # peft can no longer pass encoders past keys/values
    UNSUPPORTED[("prefix-tuning-peft", "roberta")] = "past key values"


def fresh(model_name: str, method: str):
    task = builtin_tasks()[MODELS[model_name]]
    bundle = build_bundle(model_name, task=task)
    rows = load_rows(task, "train")[:64]
    feats = train_features(task, bundle, rows, 32)

    def drawn(n):
        data = batches(feats, 8, 0)
        return [collate(next(data), bundle.tokenizer.pad_token_id) for _ in range(n)]

    m = methods.get(method)
    device = "cuda" if method == "qlora" and torch.cuda.is_available() else "cpu"  # QLoRA's base lives on the GPU
    bundle.model.to(device)
    config = m.resolve(FAST.get(method, {}), bundle.arch, lambda k: k)
    adapted = m.apply(bundle.model, config, ApplyContext(bundle, TrainConfig(batch_size=8), 10, calibration_of(drawn),
                                                         device, task, rows[:4]))
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
    head = closed_forms.TINY_HEAD if bundle.head_modules else 0
    counts = adapted.params()
    if method != "qlora":  # no closed form yet for peft's all-linear choice on a quantised model (GPU only)
        assert counts["trainable"] - head == closed_forms.tiny_trainable(method, arch, len(bundle.tokenizer))

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


def test_known_counts_on_roberta_base_without_weights(tiny_bundle):
    """From the roberta-base config on the meta device: LoRA r=8 on q,v and BitFit, head excluded."""
    for method, expected, published in (("lora", closed_forms.lora_q_v(768, 12), 294_912),
                                        ("bitfit", closed_forms.bitfit(768, 12, 3072), 102_144)):
        bundle = tiny_bundle("roberta-base", meta=True)
        m = methods.get(method)
        adapted = m.apply(bundle.model, m.resolve({}, "roberta", lambda k: k),
                          ApplyContext(bundle, TrainConfig(), 10))
        head = closed_forms.roberta_classification_head(768)
        assert adapted.params()["trainable"] - head == expected == published


def test_every_method_is_declared_fully():
    for m in methods.REGISTRY.values():
        assert m.family in methods.FAMILIES and m.paper and m.description
        for arch in ("roberta", "bert", "t5", "gpt2", "llama"):
            if m.target_keys and arch not in m.unsupported:
                assert arch in m.targets, f"{m.name} declares no targets for {arch}"


def test_composition_trains_the_union_of_its_parts(tiny_bundle):
    from bench.methods.compose import apply_composition

    task = builtin_tasks()["synth-polarity"]
    bundle = tiny_bundle("tiny-encoder", task.type, 2)
    parts = [{"name": n, "config": methods.get(n).resolve({}, "roberta", lambda k: k)}
             for n in ("prefix-tuning", "adapter-parallel")]
    adapted = apply_composition(parts, bundle.model, ApplyContext(bundle, TrainConfig(), 10))
    prefix = closed_forms.tiny_trainable("prefix-tuning", "roberta", len(bundle.tokenizer))
    parallel = closed_forms.tiny_trainable("adapter-parallel", "roberta", len(bundle.tokenizer))
    assert adapted.params()["trainable"] == prefix + parallel + closed_forms.TINY_HEAD
    feats = train_features(task, bundle, load_rows(task, "train")[:4], 32)
    adapted.model(**collate(feats, 0)).loss.backward()
    assert all(p.grad is not None for p in adapted.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_name,task_name", [("tiny-encoder", "synth-polarity"),
                                                  ("tiny-llama", "synth-intensity")])  # a decoder's head: regression
@pytest.mark.parametrize("parts", [("bitfit", "lora"), ("lora", "bitfit"), ("adapter-pfeiffer", "lora"),
                                   ("prefix-tuning", "ia3")])
def test_a_composition_with_peft_trains_the_head_copy_not_the_original(parts, model_name, task_name, tiny_bundle):
    """peft trains a copy of the task head and never reads the original: an in-house part before it (which
    trains the original head) or BitFit after it (its biases) must not leave the original trainable, where
    it would be counted, stored and never given a gradient (a cell would fail with NoGradient)."""
    from bench.methods.compose import apply_composition

    task = builtin_tasks()[task_name]
    bundle = tiny_bundle(model_name, task=task)
    config = [{"name": n, "config": methods.get(n).resolve({}, bundle.arch, str)} for n in parts]
    adapted = apply_composition(config, bundle.model, ApplyContext(bundle, TrainConfig(), 10))
    trainable = {n: p for n, p in adapted.model.named_parameters() if p.requires_grad}
    assert not [n for n in trainable if ".original_module." in n]
    assert any(head in n for n in trainable for head in bundle.head_modules)  # the head trains
    feats = train_features(task, bundle, load_rows(task, "train")[:4], 32)
    adapted.model(**collate(feats, bundle.tokenizer.pad_token_id)).loss.backward()
    assert [n for n, p in trainable.items() if p.grad is None] == []


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning"])
def test_soft_prompts_on_an_encoder_decoder_classifier_head_are_unsupported_before_training(method, tiny_bundle):
    """T5ForSequenceClassification raises NotImplementedError for input embeddings, which is how peft passes a
    soft prompt (regression gives T5 a classifier head): the cell is `unsupported` with the reason, where it
    was `failed` at its first step."""
    from bench.errors import Unsupported

    task = builtin_tasks()["synth-intensity"]
    bundle = tiny_bundle("tiny-t5", task=task)
    chosen = methods.get(method)
    with pytest.raises(Unsupported, match="takes no input embeddings"):
        chosen.apply(bundle.model, chosen.resolve({}, bundle.arch, str), ApplyContext(bundle, TrainConfig(), 10))


def test_docs_list_every_method():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
    rows = {line.split(" | ")[0]: line.split(" | ") for line in text.splitlines() if line.startswith("| `")}
    for name, m in methods.REGISTRY.items():
        assert f"| `{name}` | {m.family} |" in text, f"docs/methods.md lacks {name}"
        if not m.external:  # the defaults column says what the registry resolves (a fix that moves one moves it)
            defaults = ", ".join(f"{k}={v}" for k, v in m.defaults.items()) or "–"
            assert rows[f"| `{name}`"][4] == defaults, f"docs/methods.md: {name}'s defaults are {defaults}"


@pytest.mark.parametrize("parts", [("prefix-tuning", "adapter-parallel"), ("fishmask", "adapter-pfeiffer")])
def test_composition_keeps_what_its_parts_declare(parts, tiny_bundle):
    from bench.methods.compose import apply_composition

    task = builtin_tasks()["synth-polarity"]

    def build():
        bundle = tiny_bundle("tiny-encoder", task.type, 2)
        feats = train_features(task, bundle, load_rows(task, "train")[:32], 32)
        calibration = calibration_of(lambda n: [collate(feats[8 * i: 8 * i + 8], 0) for i in range(n)])
        config = [{"name": n, "config": methods.get(n).resolve(FAST.get(n, {}), "roberta", str)} for n in parts]
        return apply_composition(config, bundle.model, ApplyContext(bundle, TrainConfig(), 10, calibration)), feats

    adapted, feats = build()
    vocab = len(tiny_bundle("tiny-encoder", task.type, 2).tokenizer)
    expected = sum(closed_forms.tiny_trainable(p, "roberta", vocab) for p in parts)
    assert adapted.params()["trainable"] == expected + closed_forms.TINY_HEAD
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


def test_bitfit_added_biases_change_nothing_until_trained_and_count_as_t_few_adds_them(tiny_bundle):
    """On T5 the added biases start at zero (the same outputs as the base model); on T0-3B they are T-Few's
    q, k, v, o and wi_0, wi_1 biases: (4·2048 + 2·5120)·24 in the encoder, (8·2048 + 2·5120)·24 in the decoder."""
    from bench.tools.estimate import estimate

    bundle, adapted = adapt("tiny-t5", "bitfit", total_steps=1)
    base = tiny_bundle(bundle.spec.name).model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(adapted.model.eval()(input_ids=ids, decoder_input_ids=ids).logits,
                           base(input_ids=ids, decoder_input_ids=ids).logits)
    t0 = estimate("t0-3b", "bitfit", batch_size=1, seq_len=8)["params"]
    t_few = closed_forms.t5_bitfit(2048, 5120, 24, 24, gated=True)
    assert t0["trainable"] == t0["method"] == t_few == 1_081_344


def test_compacter_pp_counts_on_t0_3b_as_t_few_configures_it():
    """T-Few's Compacter++ on T0-3B (d_model 2048, 24 + 24 blocks): after each of the 48 FFNs a PHM adapter
    2048 → 64 → 2048 with n = 4, rank 1 and a 4×4×4 rule per PHM layer; plus the 122 layer norms (2 per
    encoder block, 3 per decoder block, 2 final), 2048 weights each."""
    from bench.tools.estimate import estimate

    adapters = 48 * closed_forms.phm_adapter(2048, 64, own_rules=True)
    t0 = estimate("t0-3b", "compacter-pp", batch_size=1, seq_len=8)["params"]
    assert t0["trainable"] == t0["method"] == adapters + closed_forms.t5_norms(2048, 24, 24) == 560_128


def test_prompt_tuning_tfew_counts_on_t0_3b_as_t_few_configures_it():
    """T-Few's prompt tuning on T0-3B (d_model 2048): 10 prompts in front of the encoder's input and 10 in front
    of the decoder's (configs/prompt_tuning-10_prompts.json, Config's prompt_tuning_encoder and _decoder)."""
    from bench.tools.estimate import estimate

    t0 = estimate("t0-3b", "prompt-tuning-tfew", batch_size=1, seq_len=8)["params"]
    assert t0["trainable"] == t0["method"] == closed_forms.input_prompts(2048, 10, stacks=2) == 40_960
