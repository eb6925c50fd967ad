#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds llama.cpp with CUDA for the cards at hand only, runs the GPU tests
# (pytest -m gpu) on it and compares full-offload generation with llama-bench's tg128 (target >= 0.9x).
#   usage: scripts/gpu-check.sh          (make gpu-check; needs `make install`, the CUDA toolkit and nvidia-smi)
# One CMake build of the llama.cpp that the pinned llama-cpp-python vendors, configured through
# llama-cpp-python's own CMakeLists (its flags), gives both the shared libraries llama-cpp-python loads and
# llama-bench: the CUDA kernels, most of the build time, compile once. They go to $GPU_CHECK_DIR (default
# build/gpu-check); the user's .venv is only read: its Python runs with LLAMA_CPP_LIB_PATH, llama-cpp-python's
# own switch for loading its libraries from another folder, pointing there.
# GPU_CHECK_REHEARSE=1 runs the same steps with a CPU build on a machine without a GPU (the tests then skip).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ver=$(bash scripts/llama-cpp-python-pin.sh)
python=${PYTHON:-$root/.venv/bin/python}
dir=${GPU_CHECK_DIR:-$root/build/gpu-check}
rehearse=${GPU_CHECK_REHEARSE:-}

if [[ -z $rehearse ]] && ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
  echo "no NVIDIA GPU found: nothing checked"
  exit 0
fi
if [[ ! -x $python ]]; then
  echo "gpu-check: $python not found: run \`make install\` first" >&2
  exit 1
fi

backend=()
if [[ -n $rehearse ]]; then
  device="CPU (rehearsal: GPU_CHECK_REHEARSE=1)"
else
  device=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | paste -sd';' -)
  # compute_cap 9.0 -> 90; one architecture per distinct card, nothing else (a full build targets ~10).
  archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | tr -d ' .' | sort -u | paste -sd';' -)
  nvcc=$(command -v nvcc || true)
  [[ -n $nvcc ]] || { [[ -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc; } || true
  if [[ -z $nvcc ]]; then
    echo "gpu-check: NVIDIA GPU found ($device) but no CUDA compiler (nvcc): install the CUDA toolkit" >&2
    exit 1
  fi
  backend=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$archs" "-DCMAKE_CUDA_COMPILER=$nvcc")
fi
jobs=$(nproc 2>/dev/null || sysctl -n hw.ncpu)
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi

# The sdist `make install` keeps in lcpp-zh's cache (scripts/install_gguf_py.py), else pip fetches it.
cache=$("$python" -c 'from lcpp_zh.resolve import cache_dir; print(cache_dir())')
sdist=$cache/sdist/llama_cpp_python-$ver.tar.gz
if [[ ! -f $sdist ]]; then
  mkdir -p "$cache/sdist"
  "$python" -m pip download -q --no-deps --no-binary :all: -d "$cache/sdist" "llama-cpp-python==$ver" >&2
fi
src=$dir/src/llama_cpp_python-$ver
if [[ ! -f $src/CMakeLists.txt ]]; then
  rm -rf "${dir:?}/src" && mkdir -p "$dir/src"
  tar xzf "$sdist" -C "$dir/src"
fi

started=$SECONDS
# NO_AMX_FLAGS: the CPU flags of the user's build (see the Makefile's AMX note). LLAMA_BUILD_TOOLS: llama.cpp
# leaves its tools out when it is a subproject, as it is under llama-cpp-python's CMakeLists.
CFLAGS="${NO_AMX_FLAGS:-} ${CFLAGS:-}" CXXFLAGS="${NO_AMX_FLAGS:-} ${CXXFLAGS:-}" \
cmake -S "$src" -B "$dir/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON "${backend[@]}" \
  -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF "${launcher[@]}" >"$dir/cmake.log" 2>&1 \
  || { tail -30 "$dir/cmake.log" >&2; exit 1; }
echo "gpu-check: building llama.cpp ($jobs jobs) for $device..." >&2
cmake --build "$dir/build" -j"$jobs" --target llama-bench >>"$dir/cmake.log" 2>&1 \
  || { tail -30 "$dir/cmake.log" >&2; exit 1; }
build_s=$((SECONDS - started))
rm -rf "${dir:?}/lib" "${dir:?}/bin" && mkdir -p "$dir/lib" "$dir/bin"
find "$dir/build" -name 'lib*.so*' ! -path '*/CMakeFiles/*' -exec cp -P {} "$dir/lib/" \;
find "$dir/build" -name llama-bench -type f -perm -u+x -exec cp {} "$dir/bin/" \;
export LLAMA_CPP_LIB_PATH=$dir/lib LD_LIBRARY_PATH=$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

tests=0
"$python" -m pytest -m gpu tests/runtime/test_gpu.py -q -rs -p no:cacheprovider 2>&1 | tee "$dir/pytest.log" || tests=$?
if [[ -z $rehearse ]] && grep -q skipped "$dir/pytest.log"; then
  echo "gpu-check: GPU tests skipped on a GPU machine: ggml does not see the card through $dir/lib" >&2
  tests=1
fi
bench=$("$python" benchmarks/gpu_bench.py --llama-bench "$dir/bin/llama-bench" 2>"$dir/bench.log") \
  || { tail -20 "$dir/bench.log" >&2; bench="tg128: benchmark failed (see $dir/bench.log)"; }

echo
echo "== gpu-check summary =="
echo "device:     $device"
echo "build:      ${build_s} s (llama.cpp libraries + llama-bench, $jobs jobs${launcher:+, ccache})"
echo "$bench"
echo "tests:      $(tail -n1 "$dir/pytest.log")"
exit "$tests"
