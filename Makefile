# Scalerunner: `make demo` and `make test` are the two commands; both set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench screenshot clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/apt-packages.txt tools/setup-apt.sh tools/setup-snmpsim.sh tools/snmpsim-requirements.txt
	bash tools/setup-apt.sh tools/apt-packages.txt
	bash tools/fetch-guest-kernel.sh .cache/guest
	bash tools/setup-snmpsim.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/scalerunner demo serial
	$(BIN)/scalerunner demo control-plane --nodes 4

lint: setup
	$(BIN)/ruff check scalerunner tests benchmarks
	$(BIN)/ruff format --check scalerunner tests benchmarks
	$(BIN)/mypy
	$(BIN)/python tools/check_mpy.py

test: lint
	$(BIN)/pytest -q

# The quick loop while developing: no real processes, short hypothesis runs.
test-fast: setup
	$(BIN)/pytest -q -m "not slow" --hypothesis-profile=fast

bench: setup
	$(BIN)/python -m benchmarks

# docs/dashboard.png from the running demo (sim up --detach), else from a 14-node rack it starts
screenshot: setup
	$(BIN)/python tools/dashboard_screenshot.py --out docs/dashboard.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
