# One command each: `make test` and `make demo` set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test-debs test test-random soak demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages of real programs the tests use, installed when run as root:
# user-mode-linux boots a cgroup v2 kernel for tests/test_node_cgroup2.py, chromium shows the
# dashboard to tests/test_dashboard_browser.py (driven by Playwright)
# (each test skipped, saying why, where they are missing).
TEST_DEBS := user-mode-linux e2fsprogs chromium

test-debs:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! { command -v linux.uml && command -v chromium; } >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q $(TEST_DEBS) >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(TEST_DEBS) >/dev/null; } \
	    || echo "could not install $(TEST_DEBS)"; \
	fi

# the suite in file order (pytest-randomly, installed with the test extra, is off here)
test: venv test-debs
	$(PY) -m ruff check --quiet .
	$(PY) -m mypy
	$(PY) -m pytest -q -x -p no:cacheprovider -p no:randomly tests

# the suite in a random order, to show no test depends on the ones before it;
# the seed is printed first: `make test-random SEED=1234` repeats that order
ifndef SEED
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
test-random: venv test-debs
	@echo "test order seed: $(SEED) (again: make test-random SEED=$(SEED))"
	$(PY) -m pytest -q -p no:cacheprovider --randomly-seed=$(SEED) tests

soak: venv
	$(PY) -m pytest -q -m soak -p no:cacheprovider tests

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
