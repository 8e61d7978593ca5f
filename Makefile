# `make demo` and `make test` work on a fresh machine with nothing but Python 3.10+ and pip:
# each creates .venv when missing and (re)installs the package whenever pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core, 0 for none; tests/worker_groups.py keeps tests that share a
# trained run in one worker.
TEST_WORKERS ?= auto

.PHONY: demo test install clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,hub]'
	touch $(INSTALLED)

install: $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/detkeeper demo --run-dir $(DEMO_DIR)

test: $(INSTALLED)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# Regenerate docs/config-reference.md from the config dataclasses (tests/docs checks it is current).
.PHONY: docs
docs: $(INSTALLED)
	$(BIN)/detkeeper config reference --out docs/config-reference.md

# The fault suite alone (SIGKILLs, full disks, two trainers, bad input, parser fuzzing); `make test` runs it too.
.PHONY: faults
faults: $(INSTALLED)
	$(BIN)/python -m pytest tests/faults $(PYTEST_ARGS)
