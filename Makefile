# Every target sets up .venv itself, so a fresh clone needs only `make run` or `make test`.
# Set-up output goes to stderr: `make run` may be spawned by an editor, and its stdout
# must carry protocol lines only, even on the first run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_DIR := tests/acp_ts
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: run test schemas bench clean

$(STAMP): pyproject.toml
	@echo "warren: setting up $(VENV) (first run only: about 10 s)..." 1>&2
	@$(PYTHON) -m venv $(VENV) 1>&2
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 1>&2
	@$(PY) -m compileall -q daemon protocol client 1>&2
	@touch $(STAMP)

# The official ACP TypeScript SDK for tests/test_acp_ts_sdk.py, pinned by tests/acp_ts's
# package-lock.json. Without npm this is skipped (those tests then skip, saying why); the stamp
# is written only after a successful install, so a later run with npm installs.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(NODE_DIR) --no-audit --no-fund 1>&2 && touch $@; \
	else \
		echo "npm not found: not installing $(NODE_DIR) (the TypeScript SDK tests will skip)" 1>&2; \
	fi

run: $(STAMP)
	@$(PY) -m compileall -q daemon protocol client 1>&2
	@$(PY) -m warren.daemon serve $(ARGS)

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q -n 2 -m "not live" $(PYTEST_ARGS)

schemas: $(STAMP)
	$(PY) -m warren.protocol.schema schemas
	$(PY) -m warren.protocol.typescript schemas/typescript/warren-protocol.d.ts

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info $(NODE_DIR)/node_modules
