"""`eval --adapter`: adapters saved by a cell (this harness's folder, and peft's own files alone) are scored
exactly as the cell that trained them; bad input fails before any work."""

import json
import shutil

import pytest

from bench.cli import main
from tests.conftest import TINY_SUITE

pytestmark = pytest.mark.slow

SUITE = TINY_SUITE.replace("  - {name: full, train: {lr: 1.0e-3}}\n", "  - {name: full, train: {lr: 1.0e-3}}\n"
                           "  - {name: adapter-pfeiffer, train: {lr: 5.0e-3}}\n")


def by_label(results) -> dict:
    return {r["cell"]["label"]: r for r in (json.loads(p.read_text()) for p in (results / "tiny").glob("*.json"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    (root / "suite.yaml").write_text(SUITE)
    assert main(["run", "--suite", str(root / "suite.yaml"), "--results", str(root / "results"), "--quiet",
                 "--save-adapters", "--methods", "lora,adapter-pfeiffer"]) == 0
    return root, by_label(root / "results")


def test_a_saved_lora_scores_as_the_cell_that_trained_it_from_either_folder(trained, capsys):
    root, cells = trained
    lora = cells["lora"]
    folder = root / "results" / "tiny" / "adapters" / lora["cell"]["id"]
    assert {"peft_bench_adapter.json", "state.safetensors", "adapter_config.json",
            "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    peft_only = root / "peft-lora"  # what a peft user has: peft's two files, nothing of ours
    peft_only.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(folder / name, peft_only / name)
    suite, results = str(root / "suite.yaml"), str(root / "results")
    assert main(["eval", "--adapter", str(folder), "--suite", suite, "--results", results, "--quiet"]) == 0
    assert main(["eval", "--adapter", str(peft_only), "--suite", suite, "--model", "tiny-encoder", "--task",
                 "synth-polarity", "--seed", "1", "--results", results, "--quiet"]) == 0
    records = by_label(root / "results")
    ours, theirs = records[f"lora ({lora['cell']['id']})"], records["peft-lora"]
    for r in (ours, theirs):
        assert r["status"] == "ok" and r["cell"]["source"] == "external" and r["cell"]["method"] == "external-adapter"
        assert r["scores"]["metrics"] == lora["scores"]["metrics"]  # the same predictions, metric for metric
        assert (r["params"]["method"], r["params"]["trainable"]) == (lora["params"]["method"], lora["params"]["trainable"])
        assert "steps" not in r["train"] and r["time"]["train_s"] is None  # nothing trained
        assert r["time"]["infer_latency_merged_s"] > 0  # peft's LoRA merges
    assert lora["cell"]["source"] == "harness"
    digests = [r["cell"]["config"]["method"]["config"]["sha256"] for r in (ours, theirs)]
    assert digests[0] != digests[1]  # different files, different cells
    # evaluated again: already recorded, nothing runs
    assert main(["eval", "--adapter", str(folder), "--suite", suite, "--results", results, "--quiet"]) == 0
    assert "1 already recorded" in capsys.readouterr().out


def test_an_in_house_adapter_round_trips_through_its_harness_folder(trained):
    root, cells = trained
    pfeiffer = cells["adapter-pfeiffer"]
    folder = root / "results" / "tiny" / "adapters" / pfeiffer["cell"]["id"]
    assert not (folder / "adapter_config.json").exists()  # not a peft method: our folder only
    assert main(["eval", "--adapter", str(folder), "--suite", str(root / "suite.yaml"), "--results",
                 str(root / "results"), "--quiet", "--label", "pfeiffer-again"]) == 0
    again = by_label(root / "results")["pfeiffer-again"]
    assert again["scores"]["metrics"] == pfeiffer["scores"]["metrics"]
    assert again["params"]["stored_bytes"] == pfeiffer["params"]["stored_bytes"]


def test_bad_adapters_fail_before_any_work(trained, tmp_path, capsys):
    root, cells = trained
    results = str(tmp_path / "results")
    assert main(["eval", "--adapter", str(tmp_path), "--results", results]) == 2  # an empty folder
    assert "holds no adapter" in capsys.readouterr().err
    (tmp_path / "peft").mkdir()
    shutil.copy(root / "results" / "tiny" / "adapters" / cells["lora"]["cell"]["id"] / "adapter_config.json",
                tmp_path / "peft")
    assert main(["eval", "--adapter", str(tmp_path / "peft"), "--results", results]) == 2
    err = capsys.readouterr().err
    assert "--suite" in err and "--model" in err and "does not record" in err
    folder = root / "results" / "tiny" / "adapters" / cells["lora"]["cell"]["id"]
    assert main(["eval", "--adapter", str(folder), "--results", results]) == 2  # its suite was a file
    assert "pass --suite with its YAML file" in capsys.readouterr().err
    assert main(["eval", "--adapter", str(folder), "--suite", str(root / "suite.yaml"), "--label", "lora",
                 "--results", results]) == 2
    assert "give another with --label" in capsys.readouterr().err
    assert main(["eval", "--adapter", "../no/such/adapter", "--results", results]) == 2
    assert not (tmp_path / "results").exists()  # nothing written


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning"])
def test_a_soft_prompt_from_a_peft_folder_predicts_as_trained(name, method, tmp_path, tiny_bundle):
    """peft loads soft prompts for inference only (it refuses is_trainable, which once failed every such
    adapter): loaded from peft's own files, a prompt on a decoder's classifier head predicts what the trained
    model predicts, in right-padded batches as alone (it reads each row's last token), and counts the prompt
    table peft stores and the head as trained."""
    import torch

    from bench import methods
    from bench.cell.batching import collate
    from bench.config import TrainConfig
    from bench.methods.base import ApplyContext

    bundle = tiny_bundle(name, "regression")
    chosen = methods.get(method)
    trained = chosen.apply(bundle.model, chosen.resolve({}, bundle.arch, str),
                           ApplyContext(bundle, TrainConfig(), 10)).model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    trained.save_pretrained(str(tmp_path))  # what a peft user has
    fresh = tiny_bundle(name, "regression")
    loaded = methods.get("external-adapter").apply(fresh.model, {"path": str(tmp_path), "sha256": ""},
                                                   ApplyContext(fresh, TrainConfig(), 1)).model.eval()
    rows = [{"input_ids": list(range(5, 5 + n))} for n in (9, 4, 6)]
    with torch.no_grad():
        expected = torch.cat([trained(**collate([row], 0)).logits for row in rows])
        torch.testing.assert_close(loaded(**collate(rows, 0)).logits, expected)
    assert len(set(expected.reshape(-1).tolist())) == 3
    hidden = trained.config.hidden_size
    # num_virtual_tokens × hidden, what peft stores of either method; the head: one output, no bias
    assert sum(p.numel() for p in loaded.parameters() if p.requires_grad) == 20 * hidden + hidden


def test_malformed_descriptions_and_another_base_model_are_refused_before_any_work(trained, tmp_path, capsys):
    root, cells = trained
    folder = root / "results" / "tiny" / "adapters" / cells["lora"]["cell"]["id"]
    suite, results = str(root / "suite.yaml"), str(tmp_path / "results")
    meta = json.loads((folder / "peft_bench_adapter.json").read_text())
    for text, message in (("garbage{", "not a readable adapter description"), ("[1, 2]", "a JSON list, not an object"),
                          (json.dumps({**meta, "seed": "one"}), "mistyped seed (int)")):
        copy = tmp_path / f"copy{len(text)}"
        shutil.copytree(folder, copy)
        (copy / "peft_bench_adapter.json").write_text(text)
        assert main(["eval", "--adapter", str(copy), "--suite", suite, "--results", results]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "--adapter", str(folder), "--suite", suite, "--model", "tiny-gpt2", "--results", results]) == 2
    assert "trained on 'tiny-encoder', not on 'tiny-gpt2'" in capsys.readouterr().err
    peft_only = tmp_path / "peft"
    peft_only.mkdir()
    config = json.loads((folder / "adapter_config.json").read_text())
    (peft_only / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "gpt2"}))
    shutil.copy(folder / "adapter_model.safetensors", peft_only)
    assert main(["eval", "--adapter", str(peft_only), "--suite", suite, "--model", "roberta-base", "--task",
                 "synth-polarity", "--results", results]) == 2
    assert "trained on 'gpt2', not on 'roberta-base'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
