# Two commands: `make demo` (set up + run the main job) and `make test` (lint, types, tests, the docs build).
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed only when the environment has no torch yet; a torch you already have is kept.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lightning-per-installed
DOCS_BUILD = NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

.PHONY: setup demo test lint docs bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[examples,dev,docs]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m lightning_per.examples.demo

lint: setup
	$(PY) -m ruff check lightning_per tests benchmarks examples docs/figures
	$(PY) -m ruff format --check lightning_per tests benchmarks examples docs/figures
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q
	$(DOCS_BUILD)

# The documentation site (docs/, mkdocs.yml) into site/, offline; any warning fails the build.
docs: setup
	$(DOCS_BUILD)

# The quick benchmarks (about 20 minutes on 2 CPU cores), then benchmarks/README.md from every JSON in bench_out/;
# `$(PY) -m benchmarks.run_all --render-only` re-renders the page alone. The long runs are listed on the page.
bench: setup
	$(PY) -m benchmarks.run_all

# On a CUDA machine: the gpu-marked tests in mixed precision, the cost ratio and the overhead, in bench_out/gpu_check
# (under 8 minutes); without CUDA, a CPU smoke version in seconds.
gpu-check: setup
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) lightning_logs site
