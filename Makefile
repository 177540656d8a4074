# thermograd — every entry point a user or CI needs.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is pinned exactly: here that file is on disk; elsewhere PyPI's torch is the multi-GB CUDA
# build, and TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU build from PyTorch's own index.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1
TEST_WORKERS ?= auto

.PHONY: install system-deps test lint unit bench demo clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[all,dev]'
	@touch $@

install: $(BIN)/.installed

system-deps:
	@bash scripts/system-deps.sh

lint: install
	$(BIN)/ruff check .

test: install system-deps lint
	@bash scripts/test.sh $(BIN)/python $(TEST_WORKERS) $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench.run_all

demo: install system-deps
	$(BIN)/python -m scripts.demo $(if $(KEEP),--keep,) $(if $(RANKS),--ranks $(RANKS),) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-out
