# keras-cxr: two commands on a fresh machine.
#   make demo   set up .venv, get real NIH data (DATA=..., ../shared/data/nih_sample, the data home,
#               or a one-time download of a small official sample) and run the main job
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?=
MODEL  ?= lsgan
EPOCHS ?=
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test bench compare install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m keras_cxr demo $(if $(DATA),--data "$(DATA)") --model $(MODEL) $(if $(EPOCHS),--epochs $(EPOCHS))

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs reports build *.egg-info

# Train every model's CPU default on the NIH sample and compare them (the README's table; ~1 h on 2 cores)
compare: $(STAMP)
	$(PY) benchmarks/compare_models.py
