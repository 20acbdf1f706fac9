import os
from pathlib import Path

# Under pytest-xdist every worker is a process of its own: one thread each keeps 2 workers on
# 2 cores from oversubscribing OpenMP, which slows torch down by orders of magnitude. Set before
# torch is imported (cell processes inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PEFT_BENCH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if os.environ.get("PEFT_BENCH_REQUIRE_SHARED") == "1" and not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"PEFT_BENCH_REQUIRE_SHARED=1 (CI) but {SHARED_DATA} does not exist: "
                                "tests that read real data would be skipped")


def pytest_collection_modifyitems(config, items):
    """Tests marked shared_data skip without ../shared/data (CI requires it: see pytest_configure)."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs real data in {SHARED_DATA}")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite YAML into tmp_path and return its path."""

    def write(text: str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def tiny_bundle():
    """A factory of fresh model bundles: `tiny_bundle()` is the tiny encoder classifying 2 labels, and
    `tiny_bundle("tiny-t5", task=task, seed=1)` or `tiny_bundle("roberta-base", meta=True)` others (the
    defaults and options: tests/adapting.py's build_bundle)."""
    from tests.adapting import build_bundle  # imports torch: only where a test asks for a model

    return build_bundle


TINY_SUITE = """\
name: tiny
description: test suite
methods:
  - {name: full, train: {lr: 1.0e-3}}
  - {name: lora, train: {lr: 5.0e-3}}
models: [tiny-encoder]
tasks: [synth-polarity]
seeds: [1]
train: {batch_size: 16, max_steps: 20, max_length: 32, eval_batch_size: 64, max_eval_samples: 64}
"""


@pytest.fixture(autouse=True)
def _unfreeze_gc():
    """The planning commands freeze what is alive (gc.freeze) because their process ends with them; a test that
    calls one in this process gives the objects back to the collector afterwards."""
    import gc

    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _registry_as_shipped():
    """A suite's `method_modules` register their methods in the process that loads the suite: after each test, the
    registry is as it was before it and the module is forgotten, so a later test in this worker (test_methods' docs
    check walks the whole registry) sees the package's methods only, whatever order xdist gives the tests."""
    import sys

    from bench import methods

    saved = dict(methods.REGISTRY)
    yield
    methods.REGISTRY.clear()
    methods.REGISTRY.update(saved)
    sys.modules.pop("tests.faulty_methods", None)
