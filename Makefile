# The set-up commands: `make demo` (runtime requirements) and `make test` / `make lint` (plus the dev tools).
# Each creates the venv when it is missing.
VENV ?= .venv
DEMO_DIR ?= .demo
PYTHON_BOOT ?= python3
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test test-fast lint repro bench bench-sweep bench-zoo clean-demo

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed   ## the pipeline offline on generated data, in $(DEMO_DIR)
	$(PY) -m demo.run --dir $(DEMO_DIR)

test: $(VENV)/.installed-dev   ## the whole test suite, including the end-to-end dvc repro
	$(PY) -m pytest

test-fast: $(VENV)/.installed-dev  ## without the slow end-to-end tests
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed-dev   ## ruff: lint rules and formatting (pre-commit runs the same)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

repro: $(VENV)/.installed  ## the real pipeline (needs internet; a GPU recommended)
	$(PY) -m dvc repro

bench: $(VENV)/.installed  ## training vs a plain PyTorch loop, a stage's start-up (CPU sizes; the GPU's with CUDA): bench/results.json
	$(PY) -m bench.run

bench-sweep: $(VENV)/.installed  ## make sweep on 4 tiny entries of the demo, JOBS=1 and 2: overhead per entry (6 min)
	$(PY) -m bench.run --only sweep

bench-zoo: $(VENV)/.installed  ## DVC's bookkeeping with all 1,102 sweep entries vs a trivial project: status, dvc.lock write, restore (35+ min)
	$(PY) -m bench.run --only zoo

clean-demo:
	rm -rf $(DEMO_DIR)

# The pending sweep entries trained on JOBS warm workers, each recorded in DVC, dvc.lock written once (README:
# "Running the sweep in parallel").
# WORKSPACE: another DVC workspace (e.g. .demo); SHARD=i/K: the i-th of K shards, then `dvc push --run-cache`;
# PER_GPU: how many workers may share one GPU.
WORKSPACE ?= .
.PHONY: sweep prune
# `make sweep` validates params.yaml and the variables first, keeps (and names) the entries taken out of params.yaml
# (only `make prune` removes them), and ends with the plot up to date (unless SHARD is set: every shard pushes).
sweep: $(VENV)/.installed
	@$(PY) -m tools.sweep --workspace $(WORKSPACE) $(if $(JOBS),--jobs $(JOBS)) $(if $(SHARD),--shard $(SHARD)) \
		$(if $(PER_GPU),--per-gpu $(PER_GPU))

# The outputs and dvc.lock entries of the sweep entries no longer in params.yaml (an architecture or a seed taken
# out) removed, their metrics files deleted, then the plot brought up to date (README: "Changing architectures").
prune: $(VENV)/.installed
	@$(PY) -m tools.prune --workspace $(WORKSPACE)
