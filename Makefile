# The two set-up commands: `make demo` and `make test`. Both create the venv when it is missing.
VENV ?= .venv
DEMO_DIR ?= .demo
PYTHON_BOOT ?= python3
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test test-fast repro bench clean-demo

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed   ## the pipeline offline on generated data, in $(DEMO_DIR)
	$(PY) -m demo.run --dir $(DEMO_DIR)

test: $(VENV)/.installed   ## the whole test suite, including the end-to-end dvc repro
	$(PY) -m pytest

test-fast: $(VENV)/.installed  ## without the slow end-to-end tests
	$(PY) -m pytest -m "not slow"

repro: $(VENV)/.installed  ## the real pipeline (needs internet; a GPU recommended)
	$(PY) -m dvc repro

bench: $(VENV)/.installed  ## measure against plain baselines (about 5 min); writes bench/results.json
	$(PY) -m bench.run

clean-demo:
	rm -rf $(DEMO_DIR)

# The pending sweep entries JOBS at a time on DVC's experiment queue (README: "Running the sweep in parallel").
# WORKSPACE: another DVC workspace (e.g. .demo); SHARD=i/K: the i-th of K shards, then `dvc push --run-cache`;
# PER_GPU: how many jobs may share one GPU.
WORKSPACE ?= .
.PHONY: sweep
sweep: $(VENV)/.installed
	$(PY) -m tools.sweep --workspace $(WORKSPACE) $(if $(JOBS),--jobs $(JOBS)) $(if $(SHARD),--shard $(SHARD)) \
		$(if $(PER_GPU),--per-gpu $(PER_GPU))
