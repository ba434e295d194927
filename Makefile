# Two commands: `make demo` (set up + run the main job) and `make test` (lint, types, tests).
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed only when the environment has no torch yet; a torch you already have is kept.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lightning-per-installed

.PHONY: setup demo test lint bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[examples,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m lightning_per.examples.demo

lint: setup
	$(PY) -m ruff check lightning_per tests benchmarks
	$(PY) -m ruff format --check lightning_per tests benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks.run_all

# On a CUDA machine: the gpu-marked tests in mixed precision, the cost ratio and the overhead, in bench_out/gpu_check
# (under 8 minutes); without CUDA, a CPU smoke version in seconds.
gpu-check: setup
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) lightning_logs
