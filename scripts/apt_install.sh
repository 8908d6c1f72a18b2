#!/usr/bin/env bash
# Install Debian packages with apt-get for the test services (scripts/start_postgres.sh, scripts/install_chromium.sh):
# as root only; otherwise say which command would, and fail. Output goes to stderr.
#
#   bash scripts/apt_install.sh PACKAGE [PACKAGE ...]
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "apt_install: $* not installed and this is not root; install with: sudo apt-get install -y $*" >&2
  exit 1
fi
echo "apt_install: installing $* with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq "$@" >&2
