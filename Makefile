# Two commands from a fresh clone: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test dev lint bench clean cluster cluster-stop

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
	$(PY) -m ruff check embedding_core embedding_assets deploy tests benchmarks scripts
	$(PY) -m pytest -q

dev: setup
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

# The distributed profile on loopback (deploy/): Postgres, Redis, S3 (moto), webserver, daemon,
# 2 Celery workers; state, logs and the environment to source under .cluster/.
cluster: setup
	$(PY) -m deploy.cluster start

cluster-stop:
	$(PY) -m deploy.cluster stop

lint: setup
	$(PY) -m ruff check embedding_core embedding_assets deploy tests benchmarks scripts

bench: setup
	$(PY) benchmarks/bench_encode.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
