#!/usr/bin/env bash
# System packages the test suite needs beyond the Python ones: Debian's chromium for the web page tests
# (Playwright drives it; its own browser download cannot work offline) and a Chinese font, without which
# the page's screenshots show boxes instead of Chinese text.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! fc-list :lang=zh 2>/dev/null | grep -q .; then missing+=(fonts-wqy-zenhei); fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]} (Debian packages) for the browser tests ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "${missing[*]} not installed and this is not root: the browser tests will be skipped" >&2
  fi
fi
