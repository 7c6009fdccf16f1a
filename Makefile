# The two Quickstart commands: `make up` (install, then start on embedded Postgres/Redis) and `make test`
# (install, then run every check and test). Everything they need is installed here, into .venv.
PYTHON ?= python3
# onnxruntime flavour: cpu (works everywhere) or gpu (onnxruntime-gpu; see docs/architecture.md).
ORT ?= cpu
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(ORT)-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: up test install lint typecheck

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,$(ORT)]"
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

test: lint typecheck
	$(BIN)/pytest -n 2 --dist loadfile
