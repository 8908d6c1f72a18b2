#!/usr/bin/env bash
# Create .venv with kit (editable) and its dev tools, at the versions of constraints.txt. Idempotent: a second run
# with the same pyproject.toml and constraints.txt only checks the stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.kit-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import kit, torch, timm" 2>/dev/null; then
  exit 0
fi
echo "setup: installing kit and its dependencies into .venv (first time: a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt: the exact versions the tests passed with (scripts/refresh_constraints.py writes it), so that a
# green CI is reproducible; pyproject.toml's bounds say what else is expected to work
.venv/bin/python -m pip install -q -e ".[dev]" -c constraints.txt
echo "$want" > "$stamp"
