# The two Quickstart commands: `make up` (install, then start on embedded Postgres/Redis) and `make test`
# (install, then run every check and test). Everything they need is installed here, into .venv.
PYTHON ?= python3
# onnxruntime flavour: cpu (works everywhere) or gpu (onnxruntime-gpu; see docs/architecture.md).
ORT ?= cpu
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(ORT)-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

# The console's browser tests drive Debian's chromium through Playwright (Playwright's own browser download is never
# used). `make test` installs it when it is missing; `make up` does not need it.
CHROMIUM := /usr/bin/chromium
# tests/test_prometheus.py checks docker/prometheus with Debian's promtool and runs Debian's prometheus against a live
# API; the `prometheus` package ships both. `make test` installs it when it is missing.
PROMTOOL := /usr/bin/promtool
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The benchmarks' load generator (bench/jobs.py): Debian's wrk, a C program that costs far less CPU per request than
# the API it measures. Only the benchmarks need it; without it they fall back to a Python client and say so.
WRK := /usr/bin/wrk

.PHONY: up test install lint typecheck browser prometheus bench-tools

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,$(ORT)]"
	$(BIN)/python -m pip install --quiet -e platform/facemint-client
	$(BIN)/python -m pip install --quiet --no-deps insightface==2.1
	$(BIN)/python -m inference.install --check
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/facemint up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium

prometheus: $(PROMTOOL)

$(PROMTOOL):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends prometheus

bench-tools: $(WRK)

$(WRK):
	$(SUDO) apt-get update
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends wrk

test: lint typecheck $(CHROMIUM) $(PROMTOOL)
	$(BIN)/pytest -n 2 --dist loadfile
