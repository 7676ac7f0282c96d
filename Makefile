# Every target sets up .venv itself, so a fresh clone needs only `make run` or `make test`.
# Set-up output goes to stderr: `make run` may be spawned by an editor, and its stdout
# must carry protocol lines only, even on the first run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test schemas bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 1>&2
	@$(PY) -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[dev]' 1>&2
	@$(PY) -m compileall -q daemon protocol 1>&2
	@touch $(STAMP)

run: $(STAMP)
	@$(PY) -m compileall -q daemon protocol 1>&2
	@$(PY) -m daemon serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not live" $(PYTEST_ARGS)

schemas: $(STAMP)
	$(PY) -m protocol.schema schemas

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
