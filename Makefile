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

.PHONY: run test lint demo bench clean-venv verify-deploy browser-install

# Bytecode caches (gitignored) are written even where PYTHONDONTWRITEBYTECODE is set: uv
# installs without them, and every process the stack and the tests start (workers, gunicorn,
# beat: dozens in a test run) would otherwise compile celery, numpy and the rest again
# (the tests took 238 s instead of 168 s). After the install, one process imports what
# every process of the stack and the tests imports (6 s, about 2,200 modules), so that they
# do not all compile the same modules at once; the rest is written at first import. That
# is cheaper than compiling every installed package (uv --compile-bytecode: 22 s).
unexport PYTHONDONTWRITEBYTECODE
WARM_MODULES := api.app api.gunicorn_conf worker.celery_app worker.tasks worker.training \
	celery.bin.celery celery.apps.worker celery.apps.beat celery.concurrency.prefork \
	redbeat.schedulers flower.command gunicorn.app.wsgiapp lightfm pytest xdist fakeredis \
	hypothesis

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "recsys needs Python 3.11 or newer (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[recsys] installing the project into $(VENV) (first time takes about half a minute)"
	@# uv resolves and installs the same requirements about 3x faster than pip (20 s against
	@# 70 s here); pip stays the fallback when uv cannot be had or fails.
	@($(PY) -m pip install --quiet --disable-pip-version-check 'uv>=0.5,<1' \
	  && $(VENV)/bin/uv pip install --quiet --python $(PY) -e '.[test]') \
	  || (echo "[recsys] uv failed; installing with pip" \
	      && $(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]')
	@$(PY) -c 'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]' \
	  $(WARM_MODULES) || echo "[recsys] warming the bytecode cache failed (only slower)"
	@touch $(STAMP)

## run: the whole stack in the foreground (embedded Redis unless RECSYS_REDIS_URL is set)
run: $(STAMP)
	@exec $(PY) -m shared.stack.launcher

## test: every test (unit and integration); starts the servers it needs itself. When the
## browser tests' Chromium (Debian's packages) is missing, its install starts first, in the
## background at the lowest priority, beside the Python install and the first tests; their
## fixture runs the same script, which waits for it (a lock). The browser tests are not
## among the first modules, so they rarely wait.
test: browser-install $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder $(PYTEST_ARGS)

browser-install:
	@bash tests/helpers/install-chromium.sh --background

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
