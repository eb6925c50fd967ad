#!/usr/bin/env bash
# System packages the test suite needs beyond the Python ones: Debian's chromium for the web page test
# (Playwright drives it; its own browser download cannot work offline).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing chromium (Debian package) for the browser test ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is not installed and this is not root: the browser test will be skipped" >&2
  fi
fi
