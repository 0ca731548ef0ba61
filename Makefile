# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each file stays in one process, so a module's stack is
# started once. Three on 2 cores: most integration time is spent waiting on other processes
# (4.0 min against 5.8 with two, on a loaded 2-core machine). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 3

.PHONY: run test lint demo bench clean-venv verify-deploy

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "recsys needs Python 3.11 or newer (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[recsys] installing the project into $(VENV) (first time takes about a minute)"
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

## run: the whole stack in the foreground (embedded Redis unless RECSYS_REDIS_URL is set)
run: $(STAMP)
	@exec $(PY) -m shared.stack.launcher

## test: every test (unit and integration); starts the servers it needs itself
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder $(PYTEST_ARGS)

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

clean-venv:
	rm -rf $(VENV)

## demo: synthetic shop -> upload -> train with live progress -> recommendations (uses the
## stack from `make run` at RECSYS_URL, or starts a private one in the background)
demo: $(STAMP)
	@$(PY) -m shared.client.demo

## verify-deploy: build the image and run the compose stack for real, a smoke tour and two
## simulated hosts (root on Debian bookworm; installs docker.io, debootstrap; deploy/README.md)
verify-deploy:
	bash deploy/verify.sh
