#!/usr/bin/env bash
# Print the path of a headless-capable Chromium for the run-page browser tests (tests/test_run_page.py), installing
# Debian's chromium with apt-get when none is found (needs root).
#
#   export KIT_TEST_CHROMIUM="$(bash scripts/install_chromium.sh)"
#
# Everything but the path goes to stderr.
set -euo pipefail
log() { echo "install_chromium: $*" >&2; }

find_chromium() {
  local name
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  done
}

BIN=$(find_chromium || true)
if [ -z "$BIN" ]; then
  if [ "$(id -u)" != 0 ]; then
    log "chromium is not installed and this is not root; install it with: sudo apt-get install -y chromium"
    exit 1
  fi
  log "installing chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq chromium >&2
  BIN=$(find_chromium)
fi
echo "$BIN"
