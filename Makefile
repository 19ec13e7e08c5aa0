# The two commands a newcomer needs: `make demo` and `make test`.
# Both build .venv from the lock (uv.lock) when it is missing, and bring it back to the lock
# when pyproject.toml or uv.lock changed. `make lock` moves the lock forward, on purpose.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BYTECODE := $(VENV)/.bytecode
# The uv that installs the lock; the lock itself pins the same one in the dev extra.
UV_VERSION := 0.13.9
UV     := $(BIN)/uv
EXTRAS := --extra dev --extra worker --extra demo
DURATIONS := --durations=15

.PHONY: demo test test-fast test-integration test-e2e check lock bench-ingest clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/pip install -q uv==$(UV_VERSION)
	# --frozen: exactly the versions in uv.lock, never a fresh resolution.
	$(UV) sync --frozen $(EXTRAS) --python $(BIN)/python
	touch $(STAMP)

# Every installed module compiled to .pyc once. Where PYTHONDONTWRITEBYTECODE is set (this VM sets it;
# CI runs on one like it) nothing else writes them, and each process compiled Airflow anew: about 1.5 CPU s
# a process, a third of the suite's CPU time (benchmarks/README.md, "The test suite"). The packages' own
# test folders (a quarter of the files) are left out: nothing imports them.
$(BYTECODE): $(STAMP)
	$(BIN)/python -m compileall -q -j 0 -x '/tests?/' $(VENV)/lib > /dev/null
	touch $(BYTECODE)

lock: $(STAMP)
	$(UV) lock --upgrade
	@echo "uv.lock moved forward: run 'make test', then commit uv.lock with what the move changed."

check: $(STAMP)
	scripts/check

# The suite writes bytecode where PYTHONDONTWRITEBYTECODE would forbid it: the package's and the tests'
# own modules are compiled by the first process that imports them, not again by each of the hundreds of
# processes the suite starts (Airflow components, task runners, drivers, CLIs), and pytest keeps its
# rewritten test modules (benchmarks/README.md, "The test suite": 866 CPU s of tests became 768 in two
# profiled runs).
SUITE := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest
# Three pytest workers on the two cores: the real-Airflow tests spend much of their time waiting on
# Airflow's loops, and a third worker fills that time (two workers left a fifth of the CPU idle). Tests
# go out one at a time (--maxschedchunk 1: each worker holds the test it runs and one more), in the
# order collected, slowest tier first; --dist load's default first step hands each worker a quarter of
# its share at once, so every e2e test landed on the first worker, one after another.
TEST_WORKERS ?= 3
ONE_TEST_AT_A_TIME := --dist load --maxschedchunk 1
# make check, then the suite; the bytecode is compiled beside make check (its mypy keeps one core busy).
test: $(STAMP)
	$(MAKE) --no-print-directory -j 2 check $(BYTECODE)
	$(SUITE) -n $(TEST_WORKERS) $(ONE_TEST_AT_A_TIME) $(DURATIONS) $(PYTEST_ARGS)

test-fast: $(BYTECODE)
	$(SUITE) tests/unit $(DURATIONS) $(PYTEST_ARGS)

test-integration: $(BYTECODE)
	$(SUITE) tests/integration -n 2 $(ONE_TEST_AT_A_TIME) $(DURATIONS) $(PYTEST_ARGS)

test-e2e: $(BYTECODE)
	$(SUITE) tests/e2e $(DURATIONS) $(PYTEST_ARGS)

demo: $(BYTECODE)
	$(BIN)/airflow-gpu demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .airflow .demo build *.egg-info
