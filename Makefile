# Two commands from a fresh clone: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Extra pytest arguments for `make test`, e.g. PYTEST_ARGS="--durations=15" (.ci/run) or a path.
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`; each takes whole test modules (--dist loadfile), so a
# module's shared servers and stores are built once. 0 runs the suite in this process.
PYTEST_WORKERS ?= 2
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# dg (dagster-dg-cli) runs Dagster from the project's virtual environment found on PATH.
DG := VIRTUAL_ENV="$(CURDIR)/$(VENV)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test dev lint bench clean cluster cluster-stop browser

# The CPU build of torch is installed first and pinned, so nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[test]' torch==$(TORCH_VERSION)
	touch $@

setup: $(VENV)/.installed

# Headless Chromium for the browser test (tests/assets/test_ui_browser.py). Playwright cannot
# download its browsers here, so Debian's `chromium` package is used; on a machine without
# apt-get the test fails naming what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    $(SUDO) apt-get install -y chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }; \
	  else echo "chromium not found: install Chromium and set CHROMIUM=/path/to/chromium for the browser test"; fi; }

demo: setup
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(PY) scripts/demo.py

test: setup browser
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m ruff check embedding_core embedding_assets deploy tests benchmarks scripts
	$(DG) check defs
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The UI on http://127.0.0.1:3000 (`dg dev`; plain `dagster dev -w workspace.yaml` works too),
# started in DAGSTER_HOME: started here, Dagster would warn that ./dagster.yaml is not the
# instance's (it is its source, copied there). The store is the project's store/, the one
# `make demo` writes (the code would also find it from DAGSTER_HOME: embedding_core.fs.project_dir).
dev: setup
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	cd $(DAGSTER_HOME) && VIRTUAL_ENV="$(CURDIR)/$(VENV)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	  EMBEDDING_STORE_ROOT="$${EMBEDDING_STORE_ROOT:-$(CURDIR)/store}" \
	  $(CURDIR)/$(VENV)/bin/dg dev -w $(CURDIR)/workspace.yaml

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
