# towerflow: `make run` and `make test` do all the set-up on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/towerflow run

# two workers (pytest-xdist), a module on one worker, the longest modules first (tests/conftest.py)
test: install
	$(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder

test-fast: install  # unit tests while working: no flow runs, no training, no crash tests (about a minute)
	$(BIN)/python -m pytest -m "not flow and not train and not faults"

lint: install
	$(BIN)/ruff check towerflow flows tasks tests $(wildcard benchmarks)
	$(BIN)/ruff format --check towerflow flows tasks tests $(wildcard benchmarks)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
