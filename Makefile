# One virtual environment for everything; each target creates it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Keep large activation buffers mapped between steps (docs/design.md, measured facts).
export MALLOC_MMAP_THRESHOLD_ = 536870912
export MALLOC_TRIM_THRESHOLD_ = 1073741824

.PHONY: quality venv demo test test-slow bench bench-save bench-compare bench-plot peers gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.14.1 + torchvision 0.29.1: the pair that imports together on this machine's disk.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fastviz demo --synthesis --out out/demo

# The fast tier on both cores (what CI runs first, a few minutes), one torch thread per xdist
# worker unless OMP_NUM_THREADS says otherwise (two workers of two threads each on two cores
# spun at 4x the CPU time); the slow tier (torchrun,
# Chromium, Triton compiles, long renders on the pretrained models judged by a second network)
# on its own. Together they are the whole suite. --dist loadfile runs each test file on one
# worker, so a module fixture (a render on the pretrained model several tests read) is built
# once, not once per worker. (xdist_group marks would be finer, but pytest-xdist 3.8's
# loadgroup does not group under pytest 9.2: it renames item._nodeid, which 9.2 no longer reads.)
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

# Exit 5 is pytest's "no test selected" (say, with -k in PYTEST_ADDOPTS): nothing failed.
test-slow: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n 2 --dist loadfile -m slow || test $$? -eq 5

bench: venv
	$(PY) -m pytest bench -q --benchmark-only --benchmark-columns=median,iqr,ops

.PHONY: bench-smoke fuzz
# Every benchmark once, output checked, no timing statistics (CI runs it after the tests).
bench-smoke: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest bench -q --benchmark-disable

# The property-based test of the public API at 100 examples per argument (docs/reliability.md).
fuzz: venv
	FASTVIZ_FUZZ=thorough $(PY) -m pytest tests/test_fuzz.py -q

# Regression check on your own model: save a baseline, change things, compare (fails when a
# median got more than THRESHOLD percent slower).
NAME ?= baseline
THRESHOLD ?= 10
MODEL ?= efficientnet-lite0

bench-save: venv
	$(VENV)/bin/fastviz bench --model $(MODEL) --save $(NAME)

bench-compare: venv
	$(VENV)/bin/fastviz bench --model $(MODEL) --compare $(NAME) --threshold $(THRESHOLD)

bench-plot: venv
	FASTVIZ_BENCH_BATCHES=1,2,4,8,16 $(PY) -m pytest bench/test_bench_render.py -k "class_model and lowered and not bf16" --benchmark-only --benchmark-json=out/its_vs_batch.json
	$(PY) bench/plot_its_vs_batch.py out/its_vs_batch.json docs/img/its_vs_batch_cpu.png

# captum, grad-cam and lucent beside fastviz (their own venv, sharing torch); writes docs/peers.md.
peers: venv
	$(PY) bench/peers.py

# Class models per parameterisation, judged by EfficientNet-Lite1 (docs/quality.md; minutes).
quality: venv
	OMP_NUM_THREADS=1 $(PY) bench/quality.py
	OMP_NUM_THREADS=1 $(PY) bench/quality.py --features

# On a CUDA machine: GPU tests, graph vs eager, timings, 1000 class models.
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf out .pytest_cache .benchmarks
