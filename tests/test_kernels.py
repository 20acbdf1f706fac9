"""`train.kernels` (bench/plan/kernels.py, bench/cell/kernels.py): Liger's fused kernels as a speed option of a
cell, refused before any work where the model is not LLaMA-family or the package is missing, part of the cell's
configuration (so of its id) where it is asked for, and patched into the model the way Liger's API takes it.
liger-kernel itself needs Triton and CUDA and is not in the lock: its patch is a stand-in module here."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from bench.cli import main
from bench.errors import BadInput
from bench.plan import grid
from bench.plan.kernels import check_kernels
from bench.plan.suite import load_suite

ON_GPU = lambda: True  # noqa: E731 (the run's cells have a GPU)
TRAIN = "{batch_size: 4, max_steps: 2, max_length: 16, eval_batch_size: 16, max_eval_samples: 16"


def suite_file(tmp_path, models: str, kernels: str | None, methods: str = "[lora]") -> str:
    setting = f", kernels: {kernels}" if kernels else ""
    path = tmp_path / "kernels.yaml"
    path.write_text(f"name: kernels\nmethods: {methods}\nmodels: {models}\ntasks: [synth-polarity]\nseeds: [1]\n"
                    f"train: {TRAIN}{setting}}}\n")
    return str(path)


def cells_of(path: str) -> list:
    return grid.expand(load_suite(path), threads=1)


def with_liger(monkeypatch, installed: bool) -> None:
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (object() if installed else None) if name == "liger_kernel" else found(name, *a)))


def test_liger_on_a_model_that_is_not_llama_family_is_refused_naming_it(tmp_path, monkeypatch):
    with_liger(monkeypatch, installed=True)
    path = suite_file(tmp_path, "[tiny-llama, tiny-encoder]", "liger")
    with pytest.raises(BadInput) as error:
        check_kernels(cells_of(path), path, ON_GPU)
    message = str(error.value)
    assert "liger fuses the layers of LLaMA-family models only, and tiny-encoder is RoBERTa (1 cell(s)" in message
    assert error.value.where == path and error.value.choices == ["liger (models of llama)", "torch"]


def test_liger_without_the_package_is_refused_with_how_to_install_it(tmp_path, monkeypatch):
    with_liger(monkeypatch, installed=False)
    path = suite_file(tmp_path, "[tiny-llama]", "liger")
    with pytest.raises(BadInput, match="liger needs the liger-kernel package, which is not installed: pip install "
                                       "liger-kernel"):
        check_kernels(cells_of(path), path, ON_GPU)
    with_liger(monkeypatch, installed=True)
    check_kernels(cells_of(path), path, ON_GPU)  # installed, on a LLaMA with a GPU: nothing to say
    # not asked for: nothing checked, the GPUs not even asked about
    check_kernels(cells_of(suite_file(tmp_path, "[tiny-encoder]", None)), path, lambda: 1 / 0)


def test_liger_on_a_causal_lm_whose_method_trains_only_the_lm_head_is_refused(tmp_path, monkeypatch):
    """Liger's fused linear cross-entropy (0.8.5, ops/fused_linear_cross_entropy.py:89,114-123) computes the head's
    gradient only when its input needs one: head-only on a causal LM would train nothing, found on the GPU after
    loading. Refused before any work; the methods that train below the head are not."""
    with_liger(monkeypatch, installed=True)
    path = suite_file(tmp_path, "[tiny-llama]", "liger", "[lora, head-only]")
    with pytest.raises(BadInput, match="computes the head's gradient only when the layers below it train, and "
                                       r"head-only trains the LM head alone \(1 cell\(s\)") as error:
        check_kernels(cells_of(path), path, ON_GPU)
    assert error.value.where == path and error.value.choices == ["torch"]
    check_kernels(cells_of(suite_file(tmp_path, "[tiny-llama]", "liger", "[lora, full]")), path, ON_GPU)
    check_kernels(cells_of(suite_file(tmp_path, "[tiny-llama]", "torch", "[head-only]")), path, ON_GPU)


def test_a_liger_version_other_than_the_modelled_one_is_noted_and_recorded(tmp_path, monkeypatch, capsys):
    """The memory twins follow liger-kernel 0.8.5 line by line: another version's cells run, with a note that their
    prediction may be off; every record's env names the installed version (null where none is)."""
    import bench.plan.kernels as kernels
    from bench.env import collect

    with_liger(monkeypatch, installed=True)
    path = suite_file(tmp_path, "[tiny-llama]", "liger")
    monkeypatch.setattr(kernels, "installed_version", lambda dist: {"liger-kernel": "0.9.0"}[dist])
    check_kernels(cells_of(path), path, ON_GPU)
    assert ("note: liger-kernel 0.9.0 is installed; the memory prediction models 0.8.5 (bench/tools/liger_memory.py)"
            ", so packing may misjudge liger cells: pip install liger-kernel==0.8.5") in capsys.readouterr().err
    monkeypatch.setattr(kernels, "installed_version", lambda dist: {"liger-kernel": "0.8.5"}[dist])
    check_kernels(cells_of(path), path, ON_GPU)
    assert capsys.readouterr().err == ""
    monkeypatch.undo()
    recorded = collect(probe_device=False)["liger-kernel"]
    assert (recorded is None) == (importlib.util.find_spec("liger_kernel") is None)


def test_liger_where_the_cells_have_no_gpu_is_refused_from_the_executors_settings(tmp_path, monkeypatch):
    """Decided from the executor's settings (--gpus, what nvidia-smi or CUDA_VISIBLE_DEVICES shows), never through
    CUDA: the runner forks cells."""
    from bench.run.executors.local import LocalExecutor

    with_liger(monkeypatch, installed=True)
    path = suite_file(tmp_path, "[tiny-llama]", "liger")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this process sees no GPU, whatever the machine has
    with pytest.raises(BadInput, match="liger runs on CUDA GPUs only, and this run's cells have none") as error:
        check_kernels(cells_of(path), path, LocalExecutor(quiet=True).cells_on_gpu)
    assert error.value.where == path and error.value.choices == ["torch"]
    check_kernels(cells_of(path), path, LocalExecutor(quiet=True, gpus=["0"]).cells_on_gpu)  # pinned to a GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    check_kernels(cells_of(path), path, LocalExecutor(quiet=True).cells_on_gpu)  # not pinned: sees GPU 0


def test_run_refuses_before_any_work(tmp_path, monkeypatch, capsys):
    with_liger(monkeypatch, installed=False)
    results = tmp_path / "results"
    code = main(["run", "--suite", suite_file(tmp_path, "[tiny-llama]", "liger"), "--results", str(results),
                 "--quiet"])
    assert code == 2 and "liger-kernel package" in capsys.readouterr().err
    assert not results.exists()


def test_run_on_cpu_refuses_liger_before_any_work_without_touching_cuda(tmp_path):
    """A run whose cells see no GPU exits 2 before any cell (it failed inside the cell, after loading the model),
    and the runner never imported torch to decide it. In a fresh interpreter: this one may have imported torch."""
    import os
    import subprocess

    results = tmp_path / "results"
    code = ("import importlib.util, sys\n"
            "found = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: object() if name == 'liger_kernel' else found(name, *a)\n"
            "from bench.cli import main\n"
            f"code = main(['run', '--suite', {suite_file(tmp_path, '[tiny-llama]', 'liger')!r}, '--results', "
            f"{str(results)!r}, '--quiet'])\n"
            "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "liger runs on CUDA GPUs only" in done.stderr
    assert not results.exists()


def test_the_kernels_are_part_of_the_cell_and_the_default_keeps_every_id(tmp_path):
    (plain,) = cells_of(suite_file(tmp_path, "[tiny-llama]", None))
    (torch_,) = cells_of(suite_file(tmp_path, "[tiny-llama]", "torch"))
    (liger,) = cells_of(suite_file(tmp_path, "[tiny-llama]", "liger"))
    assert plain.id == torch_.id and "kernels" not in plain.config["train"]
    assert liger.config["train"]["kernels"] == "liger" and liger.id != plain.id
    with pytest.raises(BadInput, match="triton"):
        cells_of(suite_file(tmp_path, "[tiny-llama]", "triton"))


def test_liger_is_patched_into_the_built_model_as_its_api_takes_it(monkeypatch):
    from bench import tiny
    from bench.cell.kernels import apply_kernels

    calls = []
    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_llama = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    import transformers as tf

    model = tf.LlamaForCausalLM(tiny.config("llama", 64))
    apply_kernels(model, "torch")
    assert calls == []
    apply_kernels(model, "liger")  # a causal LM: its loss fused with its head too, no logits in training
    assert calls == [{"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                      "fused_linear_cross_entropy": True, "model": model}]
    classifier = tf.LlamaForSequenceClassification(tiny.config("llama", 64))
    apply_kernels(classifier, "liger")  # no LM head to fuse, and Liger's forward would replace the classifier's
    assert calls[-1] == {**calls[0], "fused_linear_cross_entropy": False, "model": classifier}
    model.config.model_type = "gemma"
    with pytest.raises(ValueError, match="no patch for model_type 'gemma'"):
        apply_kernels(model, "liger")


def test_an_executor_that_cannot_say_whether_its_cells_have_a_gpu_is_not_asked():
    """cells_on_gpu is optional in the executor contract (bench/run/executors/base.py): without it, liger is not
    refused up front; the cell finds out itself."""
    import sys
    import types

    fake = types.ModuleType("liger_kernel")
    fake.__spec__ = importlib.machinery.ModuleSpec("liger_kernel", None)
    cell = types.SimpleNamespace(train=types.SimpleNamespace(kernels="liger"), method="lora",
                                 model=types.SimpleNamespace(arch="llama", name="tiny-llama", kind="decoder"),
                                 task=types.SimpleNamespace(type="classification"), line=lambda: "a cell")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "liger_kernel", fake)
        check_kernels([cell], "suite.yaml", None)
        with pytest.raises(BadInput, match="CUDA GPUs only"):
            check_kernels([cell], "suite.yaml", lambda: False)
