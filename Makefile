# Scalerunner: `make demo` and `make test` are the two commands; both set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-serial demo-control-plane test test-fast lint bench screenshot clean

# The amd64 node image (.cache/node-image/amd64) the image tests boot: reused while its inputs are
# unchanged, so quick after the first build (about a minute, docs/images.md).
setup: $(STAMP)
	bash tools/build-node-image.sh .cache/node-image

$(STAMP): pyproject.toml tools/apt-packages.txt tools/setup-apt.sh tools/setup-snmpsim.sh tools/snmpsim-requirements.txt tools/fetch-raspi-files.sh
	bash tools/setup-apt.sh tools/apt-packages.txt
	bash tools/fetch-guest-kernel.sh .cache/guest
	bash tools/fetch-raspi-files.sh .cache/raspi
	bash tools/setup-snmpsim.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# A 14-node simulated rack (one row) left running in .scalerunner-sim/, a mix of jobs on it, the
# nodes and jobs as the CLI shows them, and the dashboard's address. `scalerunner sim down` stops it;
# a demo already running is replaced. (The earlier demos: make demo-serial, make demo-control-plane.)
DEMO_JOB := $(BIN)/scalerunner jobs submit --label sim
demo: setup
	@$(BIN)/scalerunner sim down >/dev/null 2>&1 || true
	$(BIN)/scalerunner sim up --nodes 14 --detach
	$(DEMO_JOB) --name hello -- sh -c 'echo "hello from $$(hostname) ($$(uname -m))"'
	$(DEMO_JOB) --name burn-cpu --timeout 2m -- sh -c 'i=0; while [ $$i -lt 2000000 ]; do i=$$((i+1)); done; echo counted to $$i'
	$(DEMO_JOB) --name long-sleep --timeout 10m -- sleep 300
	$(DEMO_JOB) --name ticker --timeout 10m -- sh -c 'for i in $$(seq 120); do echo tick $$i; sleep 2; done'
	$(DEMO_JOB) --name fails --retries 1 -- sh -c 'echo about to fail >&2; exit 3'
	@sleep 8
	$(BIN)/scalerunner nodes ls
	$(BIN)/scalerunner jobs ls
	$(BIN)/scalerunner sim status --brief

demo-serial: setup
	$(BIN)/scalerunner demo serial

demo-control-plane: setup
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
