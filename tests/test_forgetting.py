"""Forgetting (bench/cell/forgetting.py, forgetting.* in bench/figures.py): the pieces by hand, the loss against a
plain loop over the text with the model's own loss, the settings refused before work, and tiny cells' records."""

import fnmatch
import tomllib
from pathlib import Path

import pytest
import torch

from bench.cell.forgetting import DEFAULT_TEXT, general_text, lm_loss, pieces_of
from bench.config import TrainConfig, resolve_train
from bench.errors import BadInput
from bench.figures import FORGETTING_CHUNK_TOKENS
from bench.tasks.features import IGNORE

ROOT = Path(__file__).resolve().parents[1]


def test_pieces_by_hand():
    assert FORGETTING_CHUNK_TOKENS == 128
    ids = list(range(1000, 1300))  # 300 ids: pieces of 128, 128 and 44
    decoder = pieces_of(ids, "decoder")
    assert [len(p["input_ids"]) for p in decoder] == [128, 128, 44]
    assert decoder[2] == {"input_ids": ids[256:], "labels": [IGNORE] + ids[257:]}
    seq2seq = pieces_of(ids, "encoder-decoder")
    assert seq2seq[0] == {"input_ids": ids[:64], "labels": ids[64:128]}
    assert seq2seq[2] == {"input_ids": ids[256:278], "labels": ids[278:]}
    assert pieces_of(list(range(7)), "encoder-decoder") == [{"input_ids": [0, 1, 2, 3], "labels": [4, 5, 6]}]
    assert len(pieces_of(list(range(257)), "decoder")) == 2  # a last piece of one id predicts nothing


def plain_loss(model, tokenizer, text: str, kind: str) -> float:
    """The definition, computed apart: each piece of the token stream alone, through the model's own loss (the mean
    over its predicted tokens), weighted by how many tokens it predicts."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids), 128):
            piece = torch.tensor([ids[start: start + 128]])
            n = piece.shape[1]
            if n < 2:
                continue
            if kind == "decoder":  # HF shifts: position t predicts t + 1
                loss, predicted = model(input_ids=piece, labels=piece).loss, n - 1
            else:
                half = (n + 1) // 2
                loss, predicted = model(input_ids=piece[:, :half], labels=piece[:, half:]).loss, n - half
            total += loss.item() * predicted
            count += predicted
    return total / count


@pytest.mark.parametrize("model, objective", [("tiny-gpt2", "causal"), ("tiny-t5", "prefix")])
def test_the_loss_is_the_plain_loop_over_the_text(tiny_bundle, model, objective):
    bundle = tiny_bundle(model)
    text = general_text(bundle, None)
    assert text.objective == objective and text.sha256 == general_text(bundle, str(DEFAULT_TEXT)).sha256
    batched = lm_loss(bundle.model, text, bundle.tokenizer.pad_token_id, 5, "cpu")  # a last batch of fewer pieces
    expected = plain_loss(bundle.model, bundle.tokenizer, DEFAULT_TEXT.read_text(), bundle.kind)
    assert batched == pytest.approx(expected, rel=1e-5)
    ids = bundle.tokenizer(DEFAULT_TEXT.read_text(), add_special_tokens=False)["input_ids"]
    pieces = -(-len(ids) // 128)
    assert text.tokens == (len(ids) - pieces if objective == "causal" else
                           sum(len(ids[s: s + 128]) // 2 for s in range(0, len(ids), 128)))


def test_the_model_keeps_its_mode_and_a_classifier_has_no_lm_loss(tiny_bundle, tmp_path):
    bundle = tiny_bundle("tiny-gpt2")
    bundle.model.train()
    (tmp_path / "mine.txt").write_text("Short, but enough tokens for one piece.")
    text = general_text(bundle, str(tmp_path / "mine.txt"))
    assert len(text.pieces) == 1 and lm_loss(bundle.model, text, 0, 8, "cpu") > 0 and bundle.model.training
    assert general_text(tiny_bundle("tiny-encoder"), None) is None  # a classifier head
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(ValueError, match="at least 2"):
        general_text(bundle, str(tmp_path / "one.txt"))


def test_the_default_text_ships_with_the_package():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = DEFAULT_TEXT.relative_to(ROOT / "bench").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data["bench"])
    assert len(DEFAULT_TEXT.read_text().split()) > 500


def test_the_settings_are_checked_before_work(tmp_path):
    def resolve(**train):
        return resolve_train([(train, lambda key: f"suite train.{key}")])

    assert "forgetting" not in TrainConfig().as_dict()  # off: every recorded cell keeps its id
    assert resolve(forgetting=True).as_dict()["forgetting"] is True
    with pytest.raises(BadInput, match="cannot read .*missing.txt"):
        resolve(forgetting=True, forgetting_text=str(tmp_path / "missing.txt"))
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(BadInput, match="holds no text"):
        resolve(forgetting=True, forgetting_text=str(tmp_path / "blank.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(BadInput, match="as UTF-8"):
        resolve(forgetting=True, forgetting_text=str(tmp_path / "latin1.txt"))
    (tmp_path / "mine.txt").write_text("words")
    with pytest.raises(BadInput, match="set 'forgetting: true'"):
        resolve(forgetting_text=str(tmp_path / "mine.txt"))
    assert resolve(forgetting=True, forgetting_text=str(tmp_path / "mine.txt")).forgetting_text.endswith("mine.txt")


def test_tiny_cells_record_forgetting(tmp_path, tiny_bundle):
    """A decoder's LoRA starts as the pretrained model (B = 0): its loss before training is the plain loop's on
    a freshly built model. Full fine-tuning changes it; an encoder's classifier head leaves every figure null."""
    from bench.cell.recipe import run_cell
    from bench.plan import grid
    from bench.plan.suite import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmethods: [lora, {name: full, train: {lr: 1.0e-2}}]\nmodels: [tiny-gpt2, tiny-encoder]\n"
                     "tasks: [synth-polarity]\nseeds: [1]\ntrain: {max_steps: 6, batch_size: 8, max_length: 32, "
                     "max_eval_samples: 16, forgetting: true}\n")
    records = {(c.method, c.model.name): run_cell(c, quiet=True) for c in grid.expand(load_suite(str(suite)))}
    assert all(r["status"] == "ok" for r in records.values()), [r["error"] for r in records.values()]
    fresh = tiny_bundle("tiny-gpt2")
    expected = plain_loss(fresh.model, fresh.tokenizer, DEFAULT_TEXT.read_text(), "decoder")
    lora, full = records["lora", "tiny-gpt2"]["forgetting"], records["full", "tiny-gpt2"]["forgetting"]
    assert lora["lm_loss_before"] == pytest.approx(expected, rel=1e-5) == full["lm_loss_before"]
    assert lora["objective"] == "causal" and lora["tokens"] == general_text(fresh, None).tokens
    assert lora["text_sha256"] == full["text_sha256"] and len(lora["text_sha256"]) == 16
    assert full["lm_loss_after"] != full["lm_loss_before"]
    for figures in (lora, full):
        assert figures["delta"] == figures["lm_loss_after"] - figures["lm_loss_before"]
    assert all(v is None for v in records["full", "tiny-encoder"]["forgetting"].values())


@pytest.mark.parametrize("suite", ["smoke", "real-cpu"])
def test_the_default_suites_record_forgetting(suite):
    """Every cell measures it; MiniLM-L6 has no masked-LM head (tests/test_forgetting_masked.py), so the tiny
    decoder's cells are those whose records hold the figures."""
    from bench.plan import grid
    from bench.plan.suite import load_suite

    cells = grid.expand(load_suite(suite))
    assert all(c.train.forgetting for c in cells)
    decoders = {c.method for c in cells if c.model.kind == "decoder"}
    assert decoders == {"full", "lora"}
