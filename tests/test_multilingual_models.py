"""The multilingual models of the registry (XLM-R, mT5): their shipped configs give the published totals.

Published totals, as the checkpoints load in transformers (the hub's model pages round them: 278M, 560M, 300M,
582M, 1.23B; the papers round further: XLM-R's Table 7 says 270M and 550M, Conneau et al. 2020; mT5's Table 1
300M, 580M, 1.2B, Xue et al. 2021). XLM-R's are XLMRobertaModel's (its pooler included), mT5's
MT5ForConditionalGeneration's (an LM head of its own: mT5 does not tie it).
"""

import json

import pytest

from bench.models import REGISTRY, resolve_model
from bench.tensors import count_params
from tests import closed_forms

XLMR_PUBLISHED = {"xlm-roberta-base": 278_043_648, "xlm-roberta-large": 559_890_432}
MT5_PUBLISHED = {"mt5-small": 300_176_768, "mt5-base": 582_401_280, "mt5-large": 1_229_581_312}


def config(name: str) -> dict:
    return json.loads(REGISTRY[name].config_path().read_text())


@pytest.mark.parametrize("name", sorted(XLMR_PUBLISHED))
def test_xlm_r_totals_are_the_published_ones(name, tiny_bundle):
    cfg = config(name)
    h = cfg["hidden_size"]
    assert cfg["vocab_size"] == 250_002 and resolve_model(name).arch == "roberta"
    body = closed_forms.roberta_body(h, cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"],
                                     cfg["max_position_embeddings"], cfg["type_vocab_size"])
    assert body + closed_forms.bert_pooler(h) == XLMR_PUBLISHED[name]
    bundle = tiny_bundle(name, "classification", 3, meta=True)  # XNLI's three labels, no pooler
    assert type(bundle.model).__name__ == "XLMRobertaForSequenceClassification"
    assert count_params(bundle.model)["total"] == body + closed_forms.roberta_classification_head(h, 3)


@pytest.mark.parametrize("name", sorted(MT5_PUBLISHED))
def test_mt5_totals_are_the_published_ones(name, tiny_bundle):
    cfg = config(name)
    assert cfg["vocab_size"] == 250_112 and cfg["tie_word_embeddings"] is False
    bundle = tiny_bundle(name, meta=True)
    assert type(bundle.model).__name__ == "MT5ForConditionalGeneration"
    assert bundle.model.lm_head.weight is not bundle.model.shared.weight
    total = closed_forms.t5_total(cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"], cfg["num_layers"],
                                  cfg["num_decoder_layers"], cfg["num_heads"], cfg["relative_attention_num_buckets"],
                                  cfg["vocab_size"], gated=True, tied=False)
    assert count_params(bundle.model)["total"] == total == MT5_PUBLISHED[name]
