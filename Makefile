# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make test                 create .venv (when missing or stale) and run the test suite
#   make book [PROFILE=...]   create .venv, run the notebooks with papermill, build the book
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= study

.PHONY: test book bench clean

$(VENV)/.installed: requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

book: $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) tools/build_book.py --profile $(PROFILE)

bench: $(VENV)/.installed
	$(PY) benchmarks/throughput.py --json benchmarks/throughput.json

clean:
	rm -rf _build executed _vendor .pytest_cache
