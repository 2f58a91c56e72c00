# Every target builds or refreshes .venv itself, so on a fresh machine `make serve` and
# `make test` are the only commands a newcomer types.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv serve test test-fast lint bench deploy modal-serve deploy-venv browser-deps clean

venv: $(STAMP)

# torch is pinned to 2.13.0 before anything else: that release is a CPU build on this
# machine's disk, and an unpinned torch (pulled by openai-whisper) would be a multi-GB CUDA one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]' torch==2.13.0
	touch $(STAMP)

serve: venv
	$(PY) -m app.local --host $(HOST) --port $(PORT)

# The browser tests need Debian's chromium; installed when missing (root, as on CI).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium unavailable: browser tests will be skipped"

test: venv browser-deps
	$(PY) -m pytest -q

# Every module still has tests here; the slow ones (whole jobs, crash and kill scenarios, load)
# run in `make test`.
test-fast: venv
	$(PY) -m pytest -q -m "not slow and not browser"

# ruff for style, mypy (config in pyproject.toml) for the types between modules.
lint: venv
	$(PY) -m ruff check transcriber app bench tests
	$(PY) -m mypy

bench: venv
	$(PY) -m bench

# Deploying needs a light environment of its own: modal and what app.modal_app imports at
# deploy time (requirements-deploy.txt), a few seconds of pip instead of the 2.6 GB test venv.
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
MODAL := PYTHONPATH=. $(DEPLOY_VENV)/bin/modal

deploy-venv: $(DEPLOY_STAMP)

$(DEPLOY_STAMP): requirements-deploy.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install -q -r requirements-deploy.txt
	touch $(DEPLOY_STAMP)

# The weights are written once per deployment (download_weights, a CPU function), then the app
# is deployed; its GPU containers only read them. STREAMSCRIBE_MODAL_ENV picks the copy
# (default prod): its Dict and Volumes are its own.
deploy: deploy-venv
	$(MODAL) run -m app.modal_app::download_weights
	$(MODAL) deploy -m app.modal_app

# A temporary, hot-reloading copy with its own state (STREAMSCRIBE_MODAL_ENV=dev).
modal-serve: deploy-venv
	STREAMSCRIBE_MODAL_ENV=dev $(MODAL) run -m app.modal_app::download_weights
	STREAMSCRIBE_MODAL_ENV=dev $(MODAL) serve -m app.modal_app

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache test-artifacts data
