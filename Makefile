# Two commands do all the set-up on a fresh machine (see README):
#   make demo   creates .venv, installs kubeforge, runs the default pipeline locally
#   make test   the same environment, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench clean-runs

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kubeforge run

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not server and not cluster"

bench: $(STAMP)
	$(BIN)/python -m bench.demo_walltime
	$(BIN)/python -m bench.pipeline_overhead
	$(BIN)/python -m bench.training_throughput

clean-runs:
	rm -rf runs
