# lcpp-zh: every entry point CI and the README use. `make demo` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CUDA=1 builds llama-cpp-python with the CUDA backend (needs nvcc); the default build is CPU-only.
CUDA ?=
CMAKE_ARGS_CUDA := $(if $(CUDA),-DGGML_CUDA=on,)
MODEL ?=
QUANT ?= Q4_K_M
OUTTYPE ?= auto
OUT ?= out

.PHONY: install demo test convert serve bench lint clean help

help:
	@echo "make demo     - offline demo: build a tiny Chinese Llama, convert, quantize, verify, chat"
	@echo "make test     - install everything and run the test suite"
	@echo "make convert MODEL=<dir or repo id> [QUANT=Q4_K_M] - convert and quantize a checkpoint"
	@echo "make install [CUDA=1] - create $(VENV) with lcpp-zh installed (editable)"
	@echo "make bench    - run the benchmarks in benchmarks/"
	@echo "make lint     - ruff"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$(CMAKE_ARGS_CUDA) $(CMAKE_ARGS)" $(PY) -m pip install -e '.[test]'
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

# The benchmarks compare with llama.cpp's own tools, built once from the same llama.cpp (about 6 minutes).
LLAMA_CPP_TOOLS ?= $(shell test -x ../shared/tools/build-llama-cpp-tools && ../shared/tools/build-llama-cpp-tools 2>/dev/null)
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/convert_bench.py
	LLAMA_CPP_TOOLS=$(LLAMA_CPP_TOOLS) $(PY) benchmarks/generate_bench.py
	LLAMA_CPP_TOOLS=$(LLAMA_CPP_TOOLS) $(PY) benchmarks/serve_bench.py

serve: install
	@test -n "$(MODEL)" || { echo "usage: make serve MODEL=<gguf, folder or repo id>"; exit 2; }
	$(VENV)/bin/lcpp-zh serve "$(MODEL)"

lint: install
	$(VENV)/bin/ruff check lcpp_zh convert tests benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(OUT)
