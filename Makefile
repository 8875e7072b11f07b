# Two commands do all the set-up on a fresh machine (see README):
#   make demo   creates .venv, installs kubeforge, runs the default pipeline locally
#   make test   the same environment, then the whole test suite (builds the kwok cluster binaries once, cached
#               outside the repository: see docs/cluster-tests.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-deps test-fast test-cluster bench clean-runs kwok-binaries cluster-up cluster-down e2e-kind

# The first `kubeforge run` after install must not pay for work a later run skips (bench/demo_walltime.py measures
# it): bytecode of the packages (--compile overrides a no-compile pip config; without any bytecode the demo took
# about 40 s more CPU here), bytecode of the editable project (pip compiles wheels only), matplotlib's font list.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --compile -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 kubeforge components pipelines
	MPLBACKEND=Agg $(BIN)/python -c "import matplotlib.pyplot"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kubeforge run

# The venv install (mostly downloading torch) and the Go build of the cluster binaries (mostly CPU) overlap.
test:
	$(MAKE) -j2 --output-sync=line test-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

test-deps: $(STAMP) kwok-binaries

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not server and not cluster"

# kwok, kwokctl, kube-apiserver, kube-controller-manager, kube-scheduler and etcd for the cluster tests
kwok-binaries:
	scripts/get-kwok-binaries.sh

test-cluster:
	$(MAKE) -j2 --output-sync=line test-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m cluster tests/cluster

# a kwok cluster to use by hand; prints its kubeconfig
cluster-up: $(STAMP) kwok-binaries
	scripts/kwok-cluster.sh up

cluster-down: $(STAMP)
	scripts/kwok-cluster.sh down

# the cluster tests against a kind cluster (needs Docker); see docs/cluster-tests.md
e2e-kind: $(STAMP)
	scripts/e2e-kind.sh

bench: $(STAMP)
	$(BIN)/python -m bench.demo_walltime
	$(BIN)/python -m bench.pipeline_overhead
	$(BIN)/python -m bench.training_throughput

clean-runs:
	rm -rf runs
