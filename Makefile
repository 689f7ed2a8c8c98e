# tomoqc: `make demo` and `make test` work on a machine with nothing but Python >= 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tomoqc-installed

.PHONY: install demo test test-slurm test-all bench weights clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,slurm]"
	@touch $(STAMP)

install: $(STAMP)

## demo: example volume -> score -> report (outputs in demo-out/)
demo: $(STAMP)
	$(BIN)/python examples/demo.py --out demo-out

## test: the default test suite (no GPU, no SLURM, no long training)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-slurm: starts a one-node SLURM on this machine (root, Debian) and runs the SLURM tests
test-slurm: $(STAMP)
	$(BIN)/python -m pytest -q -m slurm tests/slurm

test-all: test test-slurm

## bench: speed and memory tables (benchmarks/)
bench: $(STAMP)
	@for b in benchmarks/[!_]*.py; do \
	  if grep -q "^# make bench: skipped" $$b; then echo "== $$b: skipped (needs inputs; see its --help)"; continue; fi; \
	  echo "== $$b"; $(BIN)/python $$b || exit 1; done

## weights: retrain the bundled default model (long; see README)
weights: $(STAMP)
	$(BIN)/python scripts/train_default_model.py

clean:
	rm -rf demo-out bench-out .pytest_cache
