# The two commands a newcomer needs: `make demo` and `make test`.
# Both build .venv from scratch when it is missing, and bring it up to date when
# pyproject.toml changed (in place, so a running test never loses its interpreter).
# `make test` also builds .venv-airflow-3.2: the oldest Airflow minor the package accepts,
# on which it runs the tests that touch Airflow's behaviour again (pytest -m airflow_behaviour).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OLDEST       := .venv-airflow-3.2
OLDEST_STAMP := $(OLDEST)/.installed
OLDEST_PINS  := .ci/airflow-oldest.txt

.PHONY: demo test test-newest test-oldest bench-ingest clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv resolves Airflow's ~200 dependencies in seconds instead of minutes; fall back to pip.
	($(BIN)/pip install -q uv && $(BIN)/uv pip install --python $(BIN)/python -e '.[dev,worker,demo]') \
	  || $(BIN)/pip install -e '.[dev,worker,demo]'
	touch $(STAMP)

$(OLDEST_STAMP): pyproject.toml $(OLDEST_PINS) | $(STAMP)
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	($(BIN)/uv pip install --python $(OLDEST)/bin/python -e '.[dev,worker,demo]' -c $(OLDEST_PINS)) \
	  || $(OLDEST)/bin/pip install -e '.[dev,worker,demo]' -c $(OLDEST_PINS)
	touch $(OLDEST_STAMP)

# The whole suite on the newest Airflow, then the Airflow-behaviour tests on the oldest accepted.
test: test-newest test-oldest

test-newest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/python -m pytest -m airflow_behaviour $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/airflow-gpu demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST) .airflow .demo build *.egg-info
