# Two commands do all the set-up on a fresh machine:
#   make book   install, reproduce at the default scale (reusing committed results), build the site
#   make test   install, then run the whole test suite (unit, data, runner, notebooks, book, browser)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= smoke
DATASET ?=
DEVICE ?=
NOTEBOOK ?=

.PHONY: install test test-fast book reproduce bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,book]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

reproduce: $(STAMP)
	$(PY) -m locoprop reproduce --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET)) $(if $(DEVICE),--device $(DEVICE)) $(if $(NOTEBOOK),--notebook $(NOTEBOOK))

book: $(STAMP)
	$(PY) -m locoprop reproduce --profile $(PROFILE) --reuse
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The site is at $(CURDIR)/_build/html/index.html"

bench: $(STAMP)
	$(PY) -m locoprop bench

clean:
	rm -rf _build
