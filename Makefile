# One command each: `make test` and `make demo` set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test soak demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q -x -p no:cacheprovider tests

soak: venv
	$(PY) -m pytest -q -m soak -p no:cacheprovider tests

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
