# Two entry points: `make run` (the main job) and `make test` (every test); `make test-fast`
# runs the unit and service tests only (tests/unit, tests/service: no subprocess services,
# no trainer end to end, no deploy checks). Each creates the virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The one constraints file: the exact versions the suite runs with (torch's CPU build of 2.13.0 here).
# pyproject.toml carries ranges; scripts/constraints.py regenerates this file.
CONSTRAINTS := deploy/docker/constraints.txt
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp
DEV_EXTRAS := services,dev
NODE_STAMP := node_modules/.installed-stamp
# Parallel test workers (pytest-xdist): most tests wait on servers and subprocesses, so more workers
# than this machine's 2 cores pay; TEST_WORKERS=0 runs everything in one process. A module whose
# services are built once for all its tests is one xdist group (pytest.mark.xdist_group), kept on one worker.
TEST_WORKERS ?= 4
PYTEST := $(PY) -m pytest --durations=25
PARALLEL := -n $(TEST_WORKERS) --dist loadgroup

.PHONY: venv run test test-fast test-deploy lint proto bench clean browser docs

# pip's output goes to a log, shown only when the install fails.
define install
	@echo "installing $(1) into $(VENV) under $(CONSTRAINTS) (log: $(VENV)/install.log)"
	@$(PY) -m pip install --constraint $(CONSTRAINTS) $(1) >$(VENV)/install.log 2>&1 \
		|| { cat $(VENV)/install.log; echo "make: pip failed; the log is $(VENV)/install.log"; exit 1; }
endef

$(PY):
	$(PYTHON) -m venv $(VENV)

# `make run`: what running needs (the services extra).
$(RUN_STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(call install,pip)
	$(call install,-e .[services])
	@touch $@

# `make test`: the dev tools on top.
$(DEV_STAMP): $(RUN_STAMP)
	$(call install,-e .[$(DEV_EXTRAS)])
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	# `npm install`, not `npm ci`: npm 11 wants every platform's optional buf binary in
	# the lock file before `ci` accepts it; the exact version is pinned in package.json.
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Trains Pendulum-v1 through the trio on this machine (file:// store in ./rewind-data);
# run it again and it resumes from the latest checkpoint. Pass more flags with ARGS="...".
RUN_ARGS ?= --model-size tiny
run: $(RUN_STAMP)
	$(VENV)/bin/rewind train --local-services --store file://$(CURDIR)/rewind-data --resume-from-checkpoint latest $(RUN_ARGS) $(ARGS)

# Timing-sensitive tests (marked serial) run first, one at a time with nothing beside them, collected
# only from the files that mark any; then the rest on TEST_WORKERS workers.
define serial_tests
	@files="$$(grep -rlE --include='test_*.py' 'mark\.serial' $(1))"; \
		if [ -n "$$files" ]; then echo "serial: $$files"; $(PYTEST) -m serial $$files; fi
endef

test: $(DEV_STAMP) $(NODE_STAMP) browser
	$(call serial_tests,tests)
	$(PYTEST) -m "not serial" $(PARALLEL)

test-fast: $(DEV_STAMP) $(NODE_STAMP)
	$(call serial_tests,tests/unit tests/service)
	$(PYTEST) -m "not serial" $(PARALLEL) tests/unit tests/service

# Builds the image and runs the containers and the compose stack for real (root, Debian):
# deploy/test/setup.sh installs and starts what is missing first (docs/getting-started/development.md).
test-deploy: $(DEV_STAMP)
	bash deploy/test/setup.sh
	REWIND_TEST_DEPLOY=1 $(PY) -m pytest -s -o timeout=1800 tests/container

lint: $(DEV_STAMP) $(NODE_STAMP)
	$(VENV)/bin/ruff check .
	node_modules/.bin/buf lint

proto: $(DEV_STAMP)
	$(PY) -m scripts.protogen

venv: $(DEV_STAMP)

# The documentation site, into site/ (`$(VENV)/bin/mkdocs serve` to browse it while editing).
docs: $(DEV_STAMP)
	$(VENV)/bin/mkdocs build --strict

# Debian's chromium and chromium-driver (the history pages' browser tests) and iproute2 (network namespaces), from apt, as root.
browser:
	bash scripts/install_browser.sh

bench: $(DEV_STAMP)
	$(PY) -m bench.health
	$(PY) -m bench.buffer
	$(PY) -m bench.checkpoint
	$(PY) -m bench.trainer
	$(PY) -m bench.learning

clean:
	rm -rf $(VENV) node_modules rewind-data runs .pytest_cache site
