#!/usr/bin/env bash
# Prints the llama-cpp-python version pyproject.toml pins (the one place it is written), e.g. 0.3.36: the
# Makefile and the build scripts read it here. Installed code reads lcpp-zh's metadata (lcpp_zh.common.versions).
set -euo pipefail
pin=$(sed -n 's/^ *"llama-cpp-python==\([0-9][0-9A-Za-z.+-]*\)".*/\1/p' "$(dirname "$0")/../pyproject.toml")
[[ -n $pin ]] || { echo "pyproject.toml pins no llama-cpp-python version" >&2; exit 1; }
echo "$pin"
