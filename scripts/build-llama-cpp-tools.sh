#!/usr/bin/env bash
# Builds llama.cpp's own programs (llama-server, llama-bench, llama-perplexity, llama-quantize, llama-imatrix
# and ggml-rpc-server) from the llama.cpp that the pinned llama-cpp-python vendors, so that benchmarks and
# tests compare lcpp-zh with the very same llama.cpp. Prints the folder of the programs on stdout.
#   usage: scripts/build-llama-cpp-tools.sh [VERSION]     (run by `make tools`; about 6 minutes on 2 cores once)
# DEST (default <lcpp-zh cache>/llama.cpp-tools) holds one folder per version; later calls return at once.
# NO_AMX_FLAGS: the same CPU flags as the llama-cpp-python build (see the Makefile's AMX note).
set -euo pipefail
ver=${1:-$(bash "$(dirname "$0")/llama-cpp-python-pin.sh")}
python=${PYTHON:-python3}
# lcpp-zh's cache folder, as lcpp_zh.resolve.cache_dir finds it: $LCPP_ZH_CACHE, else platformdirs'
# user cache folder. Without platformdirs (run before `make install`) the same folder on Linux
# ($XDG_CACHE_HOME or ~/.cache) and macOS (~/Library/Caches) is computed here.
cache=${LCPP_ZH_CACHE:-$("$python" -c 'import platformdirs; print(platformdirs.user_cache_dir("lcpp-zh", appauthor=False))' 2>/dev/null || true)}
if [[ -z $cache ]]; then
  if [[ $(uname -s) == Darwin ]]; then cache=$HOME/Library/Caches/lcpp-zh; else cache=${XDG_CACHE_HOME:-$HOME/.cache}/lcpp-zh; fi
fi
dest=${DEST:-$cache/llama.cpp-tools}/$ver
bins="llama-server llama-bench llama-perplexity llama-quantize llama-imatrix ggml-rpc-server"
have=1
for b in $bins; do [[ -x $dest/bin/$b ]] || have=; done
if [[ -n $have ]]; then
  echo "$dest/bin"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sdist=$cache/sdist/llama_cpp_python-$ver.tar.gz  # where scripts/install_gguf_py.py keeps it
if [[ ! -f $sdist ]]; then
  "$python" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$ver" >&2
  sdist="$work/llama_cpp_python-$ver.tar.gz"
fi
tar xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$ver/vendor/llama.cpp"
# TOOLS_CMAKE_ARGS and $bins are lists of words: split on purpose.
# shellcheck disable=SC2086
CFLAGS="${NO_AMX_FLAGS:-} ${CFLAGS:-}" CXXFLAGS="${NO_AMX_FLAGS:-} ${CXXFLAGS:-}" \
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF -DGGML_RPC=ON ${TOOLS_CMAKE_ARGS:-} >&2
# shellcheck disable=SC2086
cmake --build "$work/build" -j"$(nproc 2>/dev/null || sysctl -n hw.ncpu)" --target $bins >&2
mkdir -p "$dest/bin"
for b in $bins; do cp "$work/build/bin/$b" "$dest/bin/"; done
echo "$dest/bin"
