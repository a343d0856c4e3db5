# Self-contained setup: `make test` and `make demo` create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned to the wheels this project is tested with; the package itself only needs torch>=2.4.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: install data test demo clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST from Debian (the end-to-end tests and the demo use it); needs root and apt-get.
# Under CI (which sets CI) a missing copy is an error; elsewhere the end-to-end tests are skipped.
data:
	@test -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$(FMNIST_DIR)" = /usr/share/datasets/fashion-mnist ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; \
	  test -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz || { \
	    echo "Fashion-MNIST not found in $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist'" \
	         "or set FMNIST_DIR to a folder with its four idx .gz files"; \
	    test -z "$$CI"; }; }

test: install data
	FMNIST_DIR=$(FMNIST_DIR) $(PY) -m pytest -q $(PYTEST_ARGS)

# The embedded default: teacher, R2KD student and the student alone on Fashion-MNIST, CPU only.
demo: install data
	$(PY) -m timm_r2kd.demo

clean:
	rm -rf build dist *.egg-info .pytest_cache
