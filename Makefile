# make install | train | test | bench | lint
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install train test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first (a bare `torch` could pull a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,dev]"
	# the compiled CPU kernels, once (about a minute; the PyTorch paths run where this fails)
	-$(PY) -m chainrule.native
	touch $@

train: install
	$(VENV)/bin/chainrule train

# the coverage summary of the package that CI prints (it costs about half again the tests' CPU
# time: `make test COV=` runs without it)
COV ?= --cov=chainrule --cov-report=term:skip-covered

test: install
	$(PY) -m pytest $(COV)

lint: install
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/nade.py
	$(PY) benchmarks/pixelrnn.py
