# lcpp-zh: every entry point CI and the README use. `make demo` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# GPU=cuda|metal|vulkan|hip builds llama-cpp-python with that backend of llama.cpp (CUDA=1 is GPU=cuda);
# without it the build is CPU-only, except on macOS where Metal is llama.cpp's own default.
# Every build carries llama.cpp's RPC backend (-DGGML_RPC=on): `lcpp-zh worker` and `--rpc` need it.
# The backend chosen last is kept ($(VENV)/.build-flags), so a later `make test` does not rebuild it away.
CUDA ?=
GPU ?= $(if $(CUDA),cuda,$(shell sed -n 's/.* GPU=\([a-z]*\) .*/\1/p' $(VENV)/.build-flags 2>/dev/null))
GPU_CMAKE_cuda := -DGGML_CUDA=on
GPU_CMAKE_metal := -DGGML_METAL=on
GPU_CMAKE_vulkan := -DGGML_VULKAN=on
GPU_CMAKE_hip := -DGGML_HIP=on
ifneq ($(GPU),)
ifeq ($(GPU_CMAKE_$(GPU)),)
$(error GPU=$(GPU): choose cuda, metal, vulkan or hip)
endif
endif
CMAKE_ARGS_BACKENDS := -DGGML_RPC=on $(GPU_CMAKE_$(GPU))
# The version pinned in pyproject.toml, the one place it is written.
LLAMA_CPP_PYTHON := llama-cpp-python==$(shell bash scripts/llama-cpp-python-pin.sh)
# llama.cpp builds for the CPU it compiles on (-march=native). On a CPU with AMX whose kernel or hypervisor
# does not grant the AMX tile state (virtual machines, sandboxes), ggml's AMX kernels fault with a general
# protection error on the first batch of more than one token: measured on this project's build machines.
# AMX is therefore left out unless AMX=1; the AVX-512/AVX2 kernels are used instead.
AMX ?=
NO_AMX_FLAGS := $(if $(AMX),,$(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16,))
MODEL ?=
QUANT ?= Q4_K_M
OUTTYPE ?= auto
OUT ?= out

.PHONY: install demo test convert serve bench tools gpu-check lint clean help

help:
	@echo "make demo     - offline demo: build a tiny Chinese Llama, convert, quantize, verify, chat"
	@echo "make test     - install everything and run the test suite"
	@echo "make convert MODEL=<dir or repo id> [QUANT=Q4_K_M] - convert and quantize a checkpoint"
	@echo "make install [GPU=cuda|metal|vulkan|hip] [AMX=1] - create $(VENV) with lcpp-zh installed (editable)"
	@echo "make tools    - build llama.cpp's own llama-server, llama-bench, ... for comparisons"
	@echo "make bench    - run the benchmarks in benchmarks/"
	@echo "make gpu-check - NVIDIA GPU: CUDA build for this card, GPU tests, tg128 vs llama-bench (exits 0 without a GPU)"
	@echo "make lint     - ruff (Python) and Biome (the page's JavaScript)"

install: $(STAMP)

# llama-cpp-python is rebuilt only when its build flags change (another GPU backend, AMX=1, another version),
# not for every pyproject.toml change: the build takes minutes, installing lcpp-zh seconds.
BUILD_FLAGS := $(LLAMA_CPP_PYTHON) GPU=$(GPU) AMX=$(AMX) RPC=on CMAKE_ARGS=$(CMAKE_ARGS)
FLAGS_FILE := $(VENV)/.build-flags
LLAMA_STAMP := $(VENV)/.llama-cpp-python-built
$(FLAGS_FILE): FORCE
	@mkdir -p $(VENV)
	@echo '$(BUILD_FLAGS)' | cmp -s - $@ || echo '$(BUILD_FLAGS)' > $@

FORCE:

$(LLAMA_STAMP): $(FLAGS_FILE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Built without pip's wheel cache and reinstalled: a cached or installed build would ignore changed flags.
	CMAKE_ARGS="$(CMAKE_ARGS_BACKENDS) $(CMAKE_ARGS)" CFLAGS="$(NO_AMX_FLAGS) $(CFLAGS)" CXXFLAGS="$(NO_AMX_FLAGS) $(CXXFLAGS)" \
	  $(PY) -m pip install --no-cache-dir --force-reinstall --no-deps '$(LLAMA_CPP_PYTHON)'
	touch $@

$(STAMP): pyproject.toml $(LLAMA_STAMP)
	$(PY) -m pip install -e '.[test]'
	$(PY) scripts/install_gguf_py.py
	touch $@

demo: install
	$(PY) scripts/demo.py

test: install
	bash scripts/ensure-test-deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

# QUANT= (empty) keeps the unquantized OUTTYPE file.
convert: install
	@test -n "$(MODEL)" || { echo "usage: make convert MODEL=<dir or repo id> [QUANT=Q4_K_M] [OUTTYPE=auto]"; exit 2; }
	@mkdir -p $(OUT)
	$(VENV)/bin/lcpp-zh convert "$(MODEL)" --outtype $(OUTTYPE) \
	  -o "$(OUT)/$$(basename "$(MODEL)").$(if $(QUANT),$(QUANT),$(OUTTYPE)).gguf" $(if $(QUANT),--quant $(QUANT),)

# llama.cpp's own programs (llama-server, llama-bench, llama-perplexity, llama-quantize, llama-imatrix,
# ggml-rpc-server), built once from the llama.cpp that llama-cpp-python vendors (about 6 minutes on 2 cores).
# Benchmarks compare against them and skip a comparison when they are absent.
TOOLS_DIR_FILE := $(VENV)/.llama-cpp-tools
tools: install
	NO_AMX_FLAGS="$(NO_AMX_FLAGS)" PYTHON=$(PY) bash scripts/build-llama-cpp-tools.sh > $(TOOLS_DIR_FILE)
	@echo "llama.cpp tools in $$(cat $(TOOLS_DIR_FILE))"

# Builds into build/gpu-check (the .venv stays as it is) in a few minutes on 16 cores; see the script.
# No `install` prerequisite: without a GPU it says so at once instead of first rebuilding the .venv.
gpu-check:
	NO_AMX_FLAGS="$(NO_AMX_FLAGS)" PYTHON=$(PY) bash scripts/gpu-check.sh

# Every row of the README's benchmark table (gpu_bench.py runs in `make gpu-check`).
bench: tools
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/convert_bench.py
	LLAMA_CPP_TOOLS=$$(cat $(TOOLS_DIR_FILE)) $(PY) benchmarks/generate_bench.py
	LLAMA_CPP_TOOLS=$$(cat $(TOOLS_DIR_FILE)) $(PY) benchmarks/serve_bench.py
	LLAMA_CPP_TOOLS=$$(cat $(TOOLS_DIR_FILE)) $(PY) benchmarks/multiturn_bench.py
	LLAMA_CPP_TOOLS=$$(cat $(TOOLS_DIR_FILE)) $(PY) benchmarks/eval_bench.py
	LLAMA_CPP_TOOLS=$$(cat $(TOOLS_DIR_FILE)) $(PY) benchmarks/imatrix_bench.py
	LLAMA_CPP_TOOLS=$$(cat $(TOOLS_DIR_FILE)) $(PY) benchmarks/rpc_bench.py
	LLAMA_CPP_TOOLS=$$(cat $(TOOLS_DIR_FILE)) $(PY) benchmarks/spec_bench.py
	$(PY) benchmarks/soak_bench.py

serve: install
	@test -n "$(MODEL)" || { echo "usage: make serve MODEL=<gguf, folder or repo id>"; exit 2; }
	$(VENV)/bin/lcpp-zh serve "$(MODEL)"

# The page's scripts are linted by Biome (package.json pins it; biome.json leaves the vendored files out),
# installed from package-lock.json into node_modules on first use. Warnings fail the lint as errors do.
lint: install node_modules/.bin/biome
	$(VENV)/bin/ruff check lcpp_zh convert tests benchmarks scripts
	node_modules/.bin/biome lint --error-on-warnings

node_modules/.bin/biome: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(OUT)
