#!/usr/bin/env bash
# Every GPU check of kit in one call that fits about 8 minutes on one GPU machine (GPU time comes in short leases):
#   1. a Python with kit's dependencies: .venv when carried along, else python3 plus the wheels in $KIT_WHEELS
#      (default wheels/, a folder in the working tree: a bare CUDA image lacks timm, albumentations, ...)
#   2. pytest -m cuda (tests/test_cuda.py, the on-device augmentation on CUDA)
#   3. scripts/bench_gpu.py   (kit vs a bare loop with AMP / channels_last / compile; stacked vs per-view TTA)
#   4. scripts/bench_pipeline.py (kit train fed by CPU-worker augmentation vs aug.on_device)
# and writes the device, the versions and every table to one file (--out, default gpu_check.md).
# Without CUDA it runs too: the CUDA tests are skipped, saying so, and the benchmarks run at their smoke sizes on
# the CPU (figures meaningless; it proves the script works). --smoke forces those sizes on a GPU as well.
#
#   bash scripts/gpu_check.sh [--smoke] [--out FILE]
# Each step has its own time limit (seconds: CHECK_CUDA_S, CHECK_BENCH_GPU_S, CHECK_PIPELINE_S); a step that fails
# or runs out of time is reported in the file and the exit code is 1, after the other steps have run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=gpu_check.md
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
WHEELS=${KIT_WHEELS:-wheels}
failed=0
say() { echo "gpu_check: $*" >&2; }

# 1. Python -------------------------------------------------------------------------------------------------------
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch, timm, albumentations, pytest" 2>/dev/null; then
  if [ ! -d "$WHEELS" ]; then
    say "$PY lacks torch/timm/albumentations/pytest and there is no wheels folder $WHEELS: carry .venv or put the wheels there"
    exit 1
  fi
  say "installing kit's dependencies from $WHEELS (offline)"
  [ -x .gpu-venv/bin/python ] || "$PY" -m venv --system-site-packages .gpu-venv
  PY=.gpu-venv/bin/python
  deps=$("$PY" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["dependencies"] + ["pytest>=7"]))')
  # shellcheck disable=SC2086  # one argument per requirement
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" -c constraints.txt $deps || { say "installing from $WHEELS failed"; exit 1; }
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
[ "$CUDA" = 1 ] || SMOKE=1
DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device (CPU)')")
VERSIONS=$("$PY" -c "import platform, torch, timm; print(f'Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), timm {timm.__version__}')")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
  echo "# kit GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- device: $DEVICE"
  echo "- $VERSIONS"
  echo "- sizes: $([ "$SMOKE" = 1 ] && echo 'smoke (figures meaningless)' || echo 'full')"
} > "$tmp/report.md"

# run STEP_NAME LIMIT_S COMMAND...: the command's output goes to $tmp/STEP.log; its tables (lines starting with |)
# and last lines go to the report
run() {
  local name=$1 limit=$2
  shift 2
  say "$name (up to ${limit}s): $*"
  local start=$SECONDS rc=0
  timeout "$limit" "$@" > "$tmp/$name.log" 2>&1 || rc=$?
  {
    echo
    echo "## $name"
    echo
    echo "\`$*\`: $([ $rc = 0 ] && echo ok || { [ $rc = 124 ] && echo "stopped at its limit of ${limit}s" || echo "failed (exit $rc)"; }), $((SECONDS - start)) s"
    echo
    grep -E '^\|' "$tmp/$name.log" || true
    echo
    echo '```'
    grep -vE '^\|' "$tmp/$name.log" | tail -n 8
    echo '```'
  } >> "$tmp/report.md"
  [ $rc = 0 ] || failed=1
}

# 2. pytest -m cuda -------------------------------------------------------------------------------------------------
if [ "$CUDA" = 1 ]; then
  run cuda-tests "${CHECK_CUDA_S:-150}" "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
else
  printf '\n## cuda-tests\n\nskipped: pytest -m cuda needs a CUDA GPU, and this machine has none\n' >> "$tmp/report.md"
  say "skipped pytest -m cuda: no CUDA GPU here"
fi

# 3-4. the benchmarks ------------------------------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  run bench-gpu "${CHECK_BENCH_GPU_S:-300}" "$PY" scripts/bench_gpu.py --smoke --reps 1 --no-compile
  run bench-pipeline "${CHECK_PIPELINE_S:-300}" "$PY" scripts/bench_pipeline.py --n 64 --device "$([ "$CUDA" = 1 ] && echo cuda || echo cpu)" \
    --model test_resnet --batch 8 --workers 2 --work "$tmp/pipeline"
else
  # resnet18 at 96 and 224 px with compile (its rows take a minute or two), efficientnet_b0 at 96 without
  run bench-gpu "${CHECK_BENCH_GPU_S:-240}" "$PY" scripts/bench_gpu.py --models resnet18 --sizes 96,224 --reps 3
  run bench-gpu-effnet "${CHECK_BENCH_GPU_S:-120}" "$PY" scripts/bench_gpu.py --models efficientnet_b0 --sizes 96 \
    --reps 3 --no-compile
  run bench-pipeline "${CHECK_PIPELINE_S:-150}" "$PY" scripts/bench_pipeline.py --n 4096 --work "$tmp/pipeline"
fi

mkdir -p "$(dirname "$OUT")"
cp "$tmp/report.md" "$OUT"
say "wrote $OUT ($([ $failed = 0 ] && echo 'every step ok' || echo 'a step failed: see the file'))"
exit $failed
