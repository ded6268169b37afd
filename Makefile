# One virtual environment for everything; each target creates it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Keep large activation buffers mapped between steps (see DESIGN.md, measured facts).
export MALLOC_MMAP_THRESHOLD_ = 536870912
export MALLOC_TRIM_THRESHOLD_ = 1073741824

.PHONY: venv demo test bench docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.14.1 + torchvision 0.29.1: the pair that imports together on this machine's disk.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fastviz demo --synthesis --out out/demo

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m pytest bench -q --benchmark-only --benchmark-columns=median,iqr,ops

clean:
	rm -rf out .pytest_cache .benchmarks
