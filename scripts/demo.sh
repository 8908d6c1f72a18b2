#!/usr/bin/env bash
# The main job end to end on synthetic histopathology data in the real Kaggle layout:
# data -> folds -> 5-fold training (CV score) -> TTA prediction of the test set -> validated submission + report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
COMP=histopathologic-cancer-detection
DATA=data/demo-hcd
RUN=runs/demo-hcd
rm -rf "$RUN" "$DATA"  # the demo always starts from scratch; real runs resume instead (kit train --resume)
kit demo-data --competition "$COMP" --out "$DATA" --n 600 --seed 0
kit folds --competition "$COMP" --data "$DATA" --out "$DATA/folds.csv" --n-folds 5  # kit train uses it
kit train --competition "$COMP" --data "$DATA" --out "$RUN" \
  --config hcd-classic-cnn --set train.epochs=4 --no-progress
kit predict "$RUN" --tta 8
SUBMISSION=$(ls -t submissions/"$COMP"-demo-hcd-*.csv | head -n 1)
kit submit --dry-run --competition "$COMP" --data "$DATA" "$SUBMISSION"
echo "demo done: run folder $RUN (report in $RUN/report), submission $SUBMISSION"
