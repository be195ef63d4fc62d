# Two entry points (see README): `make demo` runs the main job on the embedded model, `make test` the tests.
# Each creates .venv and installs what it needs on first use (torch pinned to the CPU build via constraints.txt).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install install-bench demo test app clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0 2>&1 | sed "/is ignored/d"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]" 2>&1 | sed "/is ignored/d"
	$(BIN)/pip install -q -c constraints.txt --no-deps recbole==1.2.1 2>&1 | sed "/is ignored/d"
	$(BIN)/python -c "import workbench.threads, torch, transformer_lens, workbench, sae, evals, routing, cli, app; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cli.demo

test: $(STAMP)
	bash scripts/test.sh

# benchmark-only reference libraries (SAELens, sparsify); never runtime dependencies
install-bench: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[bench]" 2>&1 | sed "/is ignored/d"

app: $(STAMP)
	$(BIN)/workbench app

clean:
	rm -rf $(VENV) runs
