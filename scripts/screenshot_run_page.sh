#!/usr/bin/env bash
# The README's picture of the run page: redraw a run's report (kit report RUN, which writes report/index.html) and
# take a headless Chromium screenshot of the page's top.
#
#   bash scripts/screenshot_run_page.sh runs/demo-hcd docs/run_page.png
set -euo pipefail
RUN=$(realpath "${1:?usage: screenshot_run_page.sh RUN OUT.png}")
OUT=$(realpath -m "${2:?usage: screenshot_run_page.sh RUN OUT.png}")
REPO=$(realpath "$(dirname "$0")/..")
KIT=${KIT:-$REPO/.venv/bin/kit}
CHROMIUM=$(bash "$REPO/scripts/install_chromium.sh")
$KIT report "$RUN" >/dev/null
mkdir -p "$(dirname "$OUT")"
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$PROFILE" \
  --window-size=1200,1500 --screenshot="$OUT" "file://$RUN/report/index.html" 2>/dev/null
echo "$OUT"
