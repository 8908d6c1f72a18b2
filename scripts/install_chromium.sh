#!/usr/bin/env bash
# Print the path of a headless-capable Chromium for the run-page browser tests (tests/test_run_page.py), installing
# Debian's chromium with apt-get when none is found (needs root).
#
#   export KIT_TEST_CHROMIUM="$(bash scripts/install_chromium.sh)"
#
# Everything but the path goes to stderr.
set -euo pipefail

find_chromium() {
  local name
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  done
}

BIN=$(find_chromium || true)
if [ -z "$BIN" ]; then
  bash "$(dirname "$0")/apt_install.sh" chromium
  BIN=$(find_chromium)
fi
echo "$BIN"
