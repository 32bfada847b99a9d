#!/usr/bin/env bash
# The GPU path, measured in one run: fits in 5 minutes of an H100/H200.
#
#   bash benchmarks/gpu.sh [--device cuda|cpu] [--tiny] [--out DIR]
#
# 1. the CUDA tests (pytest -m cuda; skipped with --device cpu),
# 2. crop_video forward+backward vs grid_sample        (benchmarks/crop.py),
# 3. r3d_18 16x112x112 batch 32 full/bare, ParamCrop/random, fp32 and bf16 autocast,
#    and the quickstart size alike                     (benchmarks/train.py),
# 4. clips/s of the decoding pipeline against the training step (benchmarks/data.py --against-step).
# Every ratio and rate goes to DIR/results.csv (benchmark,name,value,kind), the printed lines to
# DIR/gpu.log. --tiny: CI-sized (tiny sizes, 2 repeats, seconds); with --device cpu it is what
# tests/test_benchmarks.py runs. Run from the repository root with the environment active.
set -euo pipefail

device=cuda
tiny=0
out=benchmark-results
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "gpu.sh: unknown argument $1 (use --device cuda|cpu, --tiny, --out DIR)" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$out"
csv="$out/results.csv"
log="$out/gpu.log"
: > "$csv"
: > "$log"
[[ -n "${OMP_WAIT_POLICY:-}" ]] || export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000}  # as cli.py
python=${PYTHON:-python}
if [[ $tiny == 1 ]]; then
  repeats=2; size=(--tiny); videos=12
else
  repeats=10; size=(); videos=96
fi

step() {  # step NAME COMMAND...: run it, its output to the log and the terminal, its time too
  echo "== $1" | tee -a "$log"
  local start=$SECONDS
  shift
  "$@" 2>&1 | tee -a "$log"
  echo "   ($((SECONDS - start)) s)" | tee -a "$log"
}

"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$log"
if [[ $device == cuda* ]]; then
  step "CUDA tests" "$python" -m pytest -q -m cuda -p no:cacheprovider tests
else
  echo "== CUDA tests: skipped (--device $device)" | tee -a "$log"
fi
step "crop_video vs grid_sample" "$python" "$here/crop.py" --device "$device" --repeats "$repeats" "${size[@]}" --csv "$csv"
step "training step: full/bare, ParamCrop/random, fp32 and bf16" \
  "$python" "$here/train.py" --device "$device" --repeats "$repeats" --precision fp32 bf16 "${size[@]}" --csv "$csv"
step "decoding against the step" \
  "$python" "$here/data.py" --against-step --device "$device" --videos "$videos" "${size[@]}" --csv "$csv"
echo "results: $csv ($(($(wc -l < "$csv") - 1)) rows), log: $log"
