# Two commands from a fresh clone: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test dev lint bench clean

# The CPU build of torch is installed first and pinned, so nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[test]' torch==$(TORCH_VERSION)
	touch $@

setup: $(VENV)/.installed

demo: setup
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(PY) scripts/demo.py

test: setup
	$(PY) -m ruff check embedding_core embedding_assets tests benchmarks scripts
	$(PY) -m pytest -q

dev: setup
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

lint: setup
	$(PY) -m ruff check embedding_core embedding_assets tests benchmarks scripts

bench: setup
	$(PY) benchmarks/bench_encode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
