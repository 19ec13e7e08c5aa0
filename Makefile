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

# Three pytest workers on the two cores: the real-Airflow tests spend much of their time waiting on
# Airflow's loops, and a third worker fills that time (two workers left a fifth of the CPU idle). Every
# tier is spread over all workers, one test at a time (no xdist groups: xdist 3.8 keeps a group on
# `Item._nodeid`, which pytest 9.2's `nodeid` no longer reads); the slowest tier is collected first.
TEST_WORKERS ?= 3
# make check, then the suite; the bytecode is compiled beside make check (its mypy keeps one core busy).
test: $(STAMP)
	$(MAKE) --no-print-directory -j 2 check $(BYTECODE)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist load $(DURATIONS) $(PYTEST_ARGS)

test-fast: $(BYTECODE)
	$(BIN)/python -m pytest tests/unit $(DURATIONS) $(PYTEST_ARGS)

test-integration: $(BYTECODE)
	$(BIN)/python -m pytest tests/integration -n 2 $(DURATIONS) $(PYTEST_ARGS)

test-e2e: $(BYTECODE)
	$(BIN)/python -m pytest tests/e2e $(DURATIONS) $(PYTEST_ARGS)

demo: $(BYTECODE)
	$(BIN)/airflow-gpu demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .airflow .demo build *.egg-info
