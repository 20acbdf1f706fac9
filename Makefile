# peft-bench: `make bench` runs the default suite and writes its report; `make test` runs the tests.
# Both create .venv on first use and install the tested environment: torch first, pinned, so that
# resolving dependencies never pulls a CUDA build onto a CPU machine (on a GPU box the same pin is the
# CUDA build), then every other package at the exact version in requirements-lock.txt, then this
# package without resolving anything again.

PYTHON ?= python3
VENV ?= .venv
LATEST_VENV ?= .venv-latest
SUITE ?= smoke
RESULTS ?= results
REPORTS ?= reports
TORCH ?= torch==2.13.0
LOCK ?= requirements-lock.txt
# uv resolves the lock for every supported Python in one file (see the README's "Install").
UV ?= uv==0.13.9
ARGS ?=
PYTEST_ARGS ?= -n 2

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := -m pip install --quiet --disable-pip-version-check

.PHONY: bench report test real-cpu slurm-test slurm-down docs install lock test-latest clean parity \
	parity-hyperformer

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) $(TORCH) --constraint $(LOCK)
	$(BIN)/python $(PIP) --requirement $(LOCK)
	$(BIN)/python $(PIP) --no-deps --no-build-isolation -e .
	$(BIN)/peft-bench env --check-lock
	touch $@

install: $(STAMP)

bench: $(STAMP)
	$(BIN)/peft-bench run --suite $(SUITE) --results $(RESULTS) $(ARGS)
	$(BIN)/peft-bench report --suite $(SUITE) --results $(RESULTS) --out $(REPORTS)

report: $(STAMP)
	$(BIN)/peft-bench report --suite $(SUITE) --results $(RESULTS) --out $(REPORTS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole real-data CPU suite (MiniLM-L6 on SST-2, CoLA and RTE, 15 cells, ~20 min on 2 cores): run it before
# a release. CI runs its SST-2 slice (.ci/run). DATA_DIR holds the data in the hub's layout (docs/tasks.md).
DATA_DIR ?= ../shared/data
real-cpu: $(STAMP)
	$(BIN)/peft-bench run --suite real-cpu --data-dir $(DATA_DIR) --results $(RESULTS) $(ARGS)
	$(BIN)/peft-bench report --suite real-cpu --results $(RESULTS) --out $(REPORTS)

# `--executor slurm` on a real one-node Slurm cluster started here (as root: Debian's slurm-wlm, munge, slurmdbd on
# MariaDB; scripts/slurm/README.md): its tests, then the smoke suite on Slurm beside a local run, compared. CI runs
# the tests on the same cluster; `make slurm-down` stops it.
SLURM_DIR ?= /tmp/peft-bench-slurm
slurm-test: $(STAMP)
	PEFT_BENCH_SLURM_DIR=$(SLURM_DIR) bash scripts/slurm/up.sh
	SLURM_CONF=$(SLURM_DIR)/etc/slurm.conf PEFT_BENCH_REQUIRE_SLURM=1 $(BIN)/python -m pytest tests/test_slurm.py
	SLURM_CONF=$(SLURM_DIR)/etc/slurm.conf bash scripts/slurm/smoke.sh

slurm-down:
	PEFT_BENCH_SLURM_DIR=$(SLURM_DIR) bash scripts/slurm/down.sh

# Rewrite the docs' tables generated from the figure registry (bench/figures.py).
docs: $(STAMP)
	$(BIN)/python -m bench.tools.docs docs

# Re-resolve the lock from pyproject.toml's ranges (every extra) and torch's own requirements. torch
# itself stays out of the lock: its build (CPU or CUDA) belongs to the machine, and TORCH pins it.
lock: $(STAMP)
	$(BIN)/python $(PIP) $(UV)
	mkdir -p $(VENV)/lock
	$(BIN)/python -c "import importlib.metadata as m, re; print('\n'.join(r for r in m.requires('torch') \
	  if 'extra ==' not in r and not re.match(r'(nvidia|triton|cuda)', r)))" > $(VENV)/lock/torch-requires.in
	echo "torch ; sys_platform == 'never'" > $(VENV)/lock/without-torch.txt
	$(BIN)/uv pip compile --quiet pyproject.toml $(VENV)/lock/torch-requires.in --all-extras --universal \
	  --python-version 3.10 --overrides $(VENV)/lock/without-torch.txt --no-emit-package torch \
	  --custom-compile-command "make lock" --output-file $(LOCK)

# The newest releases pyproject.toml's ranges allow (torch stays at TORCH: the machine's build), in a
# venv of their own, then the tests. Run it before every merge; a failure names what differs from the lock.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	echo '$(TORCH)' > $(LATEST_VENV)/torch-pin.txt
	$(LATEST_VENV)/bin/python $(PIP) $(TORCH)
	$(LATEST_VENV)/bin/python $(PIP) --upgrade --upgrade-strategy eager --constraint $(LATEST_VENV)/torch-pin.txt \
	  -e '.[dev,gpu]'
	$(LATEST_VENV)/bin/peft-bench env
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS) || { $(LATEST_VENV)/bin/peft-bench env --differs; exit 1; }

clean:
	rm -rf $(REPORTS) .pytest_cache

# Parity fixtures: each in-house method's outputs, loss and gradients from its reference implementation
# (scripts/parity), generated in .venv-parity with the reference's own pins, committed under tests/fixtures/parity;
# then the parity tests, printing each method's largest difference. make test runs the same tests on the committed
# fixtures, without this environment. GEN=name limits it to one generator.
PARITY_VENV ?= .venv-parity
PARITY_PINS ?= adapters==1.3.0 transformers==4.57.6 safetensors==0.8.0
GEN ?=
parity: $(STAMP)
	test -x $(PARITY_VENV)/bin/python || $(PYTHON) -m venv $(PARITY_VENV)
	$(PARITY_VENV)/bin/python $(PIP) $(TORCH)
	$(PARITY_VENV)/bin/python $(PIP) $(PARITY_PINS)
	$(PARITY_VENV)/bin/python scripts/parity/make_fixtures.py $(GEN)
	$(BIN)/python -m pytest -s -q -p no:xdist tests/test_parity_*.py

# HyperFormer++'s reference runs on the transformers it was written for (3.5.1, without its dependencies, which
# its T5 does not need; its tokenizers pin has no wheel for this Python) beside this torch, with what the authors'
# utils import (scripts/parity/gen_hyperformer.py).
HYPERFORMER_VENV ?= .venv-hyperformer
HYPERFORMER_PINS ?= numpy filelock requests tqdm regex packaging sentencepiece sacremoses six safetensors \
	gitpython rouge_score sacrebleu
parity-hyperformer: $(STAMP)
	test -x $(HYPERFORMER_VENV)/bin/python || $(PYTHON) -m venv $(HYPERFORMER_VENV)
	$(HYPERFORMER_VENV)/bin/python $(PIP) $(TORCH)
	$(HYPERFORMER_VENV)/bin/python $(PIP) --no-deps transformers==3.5.1
	$(HYPERFORMER_VENV)/bin/python $(PIP) $(HYPERFORMER_PINS)
	$(HYPERFORMER_VENV)/bin/python scripts/parity/make_fixtures.py hyperformer
	$(BIN)/python -m pytest -s -q -p no:xdist tests/test_parity_hyperformer.py
