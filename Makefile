# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PORT   ?= 8000
APP    ?= starlette

.PHONY: install demo test lint typecheck check bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

demo: install
	PORT=$(PORT) $(PY) -m examples.$(APP)_app

LINTED = $(wildcard ollama_asgi tests examples bench)

lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

typecheck: install
	$(VENV)/bin/mypy

test: install
	@scripts/ensure-system-deps.sh
	$(MAKE) --no-print-directory lint typecheck
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

check: test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
