# edgekit: every target installs what it needs into .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.edgekit-installed
# The -march=native build segfaults in ggml's AMX path on these Xeons; a portable build avoids it.
# On ARM (Pi 5) and Apple Silicon the native build is the fast one, so only x86_64 turns it off.
ifeq ($(shell uname -m),x86_64)
CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif
export CMAKE_ARGS
export EDGEKIT_NO_PROGRESS ?=

.PHONY: setup demo test bench-build bench-runner clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/edgekit synth --preset tiny --out .cache/models/tiny-gemma4
	$(BIN)/edgekit build --model .cache/models/tiny-gemma4 --target pi5 --out dist
	$(BIN)/edgekit bench dist/tiny-gemma4/pi5 -p 512 -n 128 -r 3

test: setup
	$(BIN)/python -m pytest -q

bench-build: setup
	$(BIN)/python benchmarks/build_vs_llamacpp.py

bench-runner: setup
	$(BIN)/python benchmarks/runner_overhead.py

clean:
	rm -rf dist .cache .pytest_cache
