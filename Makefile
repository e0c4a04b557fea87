# Two entry points: `make run` (the main job) and `make test` (every test); `make test-fast`
# runs the unit and service tests only (tests/unit, tests/service: no subprocess services,
# no trainer end to end, no deploy checks). Each creates the virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp

.PHONY: venv run test test-fast test-deploy lint proto bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned first and alone: the CPU build of this exact version, never the CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	# `npm install`, not `npm ci`: npm 11 wants every platform's optional buf binary in
	# the lock file before `ci` accepts it; the exact version is pinned in package.json.
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Trains Pendulum-v1 through the trio on this machine (file:// store in ./rewind-data);
# run it again and it resumes from the latest checkpoint. Pass more flags with ARGS="...".
RUN_ARGS ?= --model-size tiny
run: $(STAMP)
	$(VENV)/bin/rewind train --local-services --store file://$(CURDIR)/rewind-data --resume-from-checkpoint latest $(RUN_ARGS) $(ARGS)

test: $(STAMP) $(NODE_STAMP) browser
	$(PY) -m pytest

test-fast: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest tests/unit tests/service

# Builds the image and runs the containers and the compose stack for real (root, Debian):
# deploy/test/setup.sh installs and starts what is missing first (see README, Deploy).
test-deploy: $(STAMP)
	bash deploy/test/setup.sh
	REWIND_TEST_DEPLOY=1 $(PY) -m pytest -s -o timeout=1800 tests/container

lint: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/ruff check .
	node_modules/.bin/buf lint

proto: $(STAMP)
	$(PY) scripts/protogen.py

venv: $(STAMP)

# Debian's chromium and chromium-driver, for the history pages' browser tests (apt, as root).
browser:
	bash scripts/install_browser.sh

bench: $(STAMP)
	$(PY) bench/health.py
	$(PY) bench/buffer.py
	$(PY) bench/checkpoint.py
	$(PY) bench/trainer.py
	$(PY) bench/learning.py

clean:
	rm -rf $(VENV) node_modules rewind-data runs .pytest_cache
