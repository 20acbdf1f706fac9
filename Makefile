# peft-bench: `make bench` runs the default suite and writes its report; `make test` runs the tests.
# Both create .venv on first use. torch is installed first, pinned, so that resolving the package's
# dependencies never pulls a CUDA build onto a CPU machine (on a GPU box the same pin is the CUDA build).

PYTHON ?= python3
VENV ?= .venv
SUITE ?= smoke
RESULTS ?= results
REPORTS ?= reports
TORCH ?= torch==2.13.0
EXTRAS ?= dev
ARGS ?=
PYTEST_ARGS ?= -n 2

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bench report test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

bench: $(STAMP)
	$(BIN)/peft-bench run --suite $(SUITE) --results $(RESULTS) $(ARGS)
	$(BIN)/peft-bench report --suite $(SUITE) --results $(RESULTS) --out $(REPORTS)

report: $(STAMP)
	$(BIN)/peft-bench report --suite $(SUITE) --results $(RESULTS) --out $(REPORTS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(REPORTS) .pytest_cache
