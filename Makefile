# One command each: `make test` and `make demo` set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv bytecode test-debs dispy-examples test test-random soak demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages of real programs the tests use, installed when run as root:
# user-mode-linux boots a cgroup v2 kernel for tests/test_node_cgroup2.py;
# systemd's systemd-analyze verifies and rates the units (tests/test_systemd.py), util-linux's
# setpriv applies the node unit's capability bounding set, sqlite3 takes the backup
# docs/operations.md shows; chromium shows the dashboard to tests/test_dashboard_browser.py (driven
# by Playwright); postgresql is the shared state store of the standby scheduler tests
# (tests/pg.py); strace lines up one job's hops in benchmarks/latency.py --trace (tests/test_bench_latency.py)
# (tests are skipped, saying why, where they are missing).
TEST_DEBS := user-mode-linux e2fsprogs systemd util-linux sqlite3 postgresql chromium strace
#: a program of each, to tell whether they are all there
TEST_PROGRAMS := linux.uml mkfs.ext4 systemd-analyze setpriv sqlite3 pg_ctlcluster chromium strace

test-debs:
	@missing=0; for p in $(TEST_PROGRAMS); do command -v $$p >/dev/null || missing=1; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ $$missing = 1 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q $(TEST_DEBS) >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(TEST_DEBS) >/dev/null; } \
	    || echo "could not install $(TEST_DEBS)"; \
	fi

# dispy 4.15.2's own example programs, which tests/test_dispy_examples.py runs (rewriting their
# import line at run time; nothing of dispy is kept in this repository): its sdist from PyPI,
# unpacked once into .venv. Without PyPI the test is skipped, saying so.
DISPY_SDIST := $(VENV)/dispy-sdist
dispy-examples: venv
	@if [ ! -d $(DISPY_SDIST)/dispy-4.15.2/py3/examples ]; then \
	    mkdir -p $(DISPY_SDIST) \
	    && $(PY) -m pip download -q --no-deps --no-binary :all: -d $(DISPY_SDIST) dispy==4.15.2 \
	    && tar -xzf $(DISPY_SDIST)/dispy-4.15.2.tar.gz -C $(DISPY_SDIST) \
	    || echo "could not download dispy 4.15.2 from PyPI: tests/test_dispy_examples.py will be skipped"; \
	fi

# The suite runs WORKERS tests at once (pytest-xdist): most of a test's time is spent waiting on the real
# processes it starts, so on 2 cores 4 workers take well under half the time of one. Tests of one
# xdist_group (a machine-wide resource, such as the node's per-cluster uids) run on one worker in turn.
WORKERS ?= 4
XDIST := -n $(WORKERS) --dist loadgroup

# Our packages compiled to bytecode once: the venv holds them as an editable install, which pip does not
# compile, and where PYTHONDONTWRITEBYTECODE is set (as on CI machines) every scheduler, node, zygote and client
# the suite starts would compile them from source again (60-80 ms of CPU each; benchmarks/startup.py)
PACKAGES := dispy_client dispy_node dispy_sched dispy_wire
bytecode: venv
	$(PY) -m compileall -q $(PACKAGES)

# the suite in file order within each worker (pytest-randomly, installed with the test extra, is off here)
test: venv bytecode test-debs dispy-examples
	$(PY) -m ruff check --quiet .
	$(PY) -m mypy
	$(PY) -m pytest -q -x -p no:cacheprovider -p no:randomly $(XDIST) --durations=25 tests

# the suite in a random order, to show no test depends on the ones before it;
# the seed is printed first: `make test-random SEED=1234` repeats that order
ifndef SEED
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
test-random: venv bytecode test-debs dispy-examples
	@echo "test order seed: $(SEED) (again: make test-random SEED=$(SEED))"
	$(PY) -m pytest -q -p no:cacheprovider --randomly-seed=$(SEED) $(XDIST) tests

soak: venv bytecode test-debs dispy-examples
	$(PY) -m pytest -q -m soak -p no:cacheprovider tests

demo: venv bytecode
	$(PY) examples/demo.py

bench: venv bytecode
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info $(addsuffix /__pycache__,$(PACKAGES)) $(addsuffix /*/__pycache__,$(PACKAGES))
