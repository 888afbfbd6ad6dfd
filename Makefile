# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PORT   ?= 8000
APP    ?= starlette

.PHONY: install demo test soak lint typecheck check bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

# The npm `ollama` client, which the real-Ollama suite drives under Node, from its lock file.
NODE_CLIENTS = tests/real/node/node_modules/.package-lock.json
$(NODE_CLIENTS): tests/real/node/package-lock.json
	cd tests/real/node && npm ci --no-audit --no-fund

demo: install
	PORT=$(PORT) $(PY) -m examples.$(APP)_app

LINTED = $(wildcard ollama_asgi tests examples bench)

# ruff, then the import contracts in pyproject.toml (no cycles; the core free of contrib, testing and host frameworks).
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

test: install
	@scripts/ensure-system-deps.sh test
	$(MAKE) --no-print-directory $(NODE_CLIENTS)
	$(MAKE) --no-print-directory lint typecheck
	$(VENV)/bin/pytest -q -m 'not bench' $(PYTEST_ARGS)

soak: install
	SOAK=full $(VENV)/bin/pytest -q -s -m soak $(PYTEST_ARGS)

check: test

# A few minutes, loopback only: every target in one interleaved run, then BENCHMARKS.md and docs/bench-*.png.
# BASELINE=<git ref or dir> also measures the gateway as it was there; BENCH_ARGS passes more (see python -m bench -h).
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	@scripts/ensure-system-deps.sh bench
	$(VENV)/bin/pytest -q -m bench tests/bench
	$(PY) -m bench $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
