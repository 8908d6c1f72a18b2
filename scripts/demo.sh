#!/usr/bin/env bash
# The main job end to end on synthetic histopathology data in the real Kaggle layout:
# data -> folds. (Later stages are appended as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DATA=data/demo-hcd
RUN=runs/demo-hcd
kit demo-data --competition histopathologic-cancer-detection --out "$DATA" --n 600 --seed 0
kit folds --competition histopathologic-cancer-detection --data "$DATA" --out "$RUN/folds.csv" --n-folds 5
