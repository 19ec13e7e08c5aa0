# The two commands a newcomer needs: `make demo` and `make test`.
# Both build .venv from scratch when it is missing, and bring it up to date when
# pyproject.toml changed (in place, so a running test never loses its interpreter).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench-ingest clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv resolves Airflow's ~200 dependencies in seconds instead of minutes; fall back to pip.
	($(BIN)/pip install -q uv && $(BIN)/uv pip install --python $(BIN)/python -e '.[dev,worker,demo]') \
	  || $(BIN)/pip install -e '.[dev,worker,demo]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/airflow-gpu demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .airflow .demo build *.egg-info
