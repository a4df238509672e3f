# Two entry points: `make demo` (the main job: the training pipeline through `dvc repro`, then promote, serve,
# monitor; docs/pipeline.md) and `make test` (the test suite). Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# --no-compile: bytecode is written on first import, for the modules used only (compiling all ~44,000 installed
# files at install took 130 s on 2 cores)
PIP := $(BIN)/pip install --disable-pip-version-check --no-compile -q -c constraints-cpu.txt

.PHONY: venv venv-dev demo test test-fast test-slow bench plots clean

# venv: what the stages need (the main job installs only this); venv-dev adds the test and docs tools
venv: $(VENV)/.installed
venv-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[all,dev]'
	touch $@

demo: venv
	$(BIN)/cafe demo

test: venv-dev
	$(BIN)/python -m pytest -m "not slow" -q --durations=15
	$(BIN)/python -m pytest -m slow -q --durations=15 || [ $$? -eq 5 ]

test-fast: venv-dev
	$(BIN)/python -m pytest -m "not slow" -q

bench: venv
	$(BIN)/python -m benchmarks.tradeoff

# the training curves as a page that needs no network (DVC's own page loads Vega from a CDN)
plots: venv
	$(BIN)/dvc plots show --html-template configs/dvc/plots-offline.html -o reports/plots

clean:
	rm -rf data models runs metrics reports registry dvc.lock
