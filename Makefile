# affect: set-up, tests, demo. Everything installs from the package registries into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint format bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# The CPU build of torch first: a looser requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -c constraints.txt torch==2.13.0
	# Every other package at the version CI tested (constraints.txt; README says how to upgrade).
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	# Compile the CPU kernels (filters, seed-stack and inference LSTM) once into numba's cache, so no run pays it later.
	$(BIN)/python -c 'from affect_core.kernels import warm_up; warm_up()'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q --durations=20 tests

demo: install
	$(BIN)/affect demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m benchmarks.run_all

# On a machine with a GPU: training on cuda against the CPU, scoring on cuda, the filter and seed benchmarks on cuda.
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) demo-output .pytest_cache

# The local stack (SeaweedFS S3, Prefect server, two-node Ray on 127.0.0.1): stack-up, stack-down, stack-status.
include infra/Makefile.stack
