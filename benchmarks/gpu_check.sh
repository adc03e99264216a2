#!/usr/bin/env bash
# The GPU benchmarks in one prepared run (< 5 minutes on an H100/H200). Results go to $OUT (or ./out).
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   DEVICE=cpu bash benchmarks/gpu_check.sh   # a quick dry run of the same script on a CPU (tiny sizes)
# decord is not needed: the tower, preprocessing and training benchmarks decode no video.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
run() { echo "== $*"; timeout 200 "$PY" "$@" || echo "FAILED ($?): $*"; }
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  TOWER="--variant ViT-L/14@336 --dtype bfloat16 --runs 10 --warmup 3"; B1=256; B2=32; TRAIN="--preset 7b --runs 3 --rounds 1"
else
  TOWER="--variant ViT-B/32 --dtype bfloat16 --runs 1 --warmup 0"; B1=4; B2=2; TRAIN="--preset small --runs 1 --rounds 1"
fi
run benchmarks/bench_tower.py --device "$DEVICE" $TOWER --batch $B1 --compile --fp8 --json "$OUT/tower_${DEVICE}_b$B1.json" 2>&1 | tee "$OUT/tower.log"
run benchmarks/bench_tower.py --device "$DEVICE" $TOWER --batch $B2 --compile-mode reduce-overhead --json "$OUT/tower_${DEVICE}_b$B2.json" 2>&1 | tee -a "$OUT/tower.log"
run benchmarks/bench_preprocess.py --device "$DEVICE" --runs 5 --json "$OUT/preprocess_$DEVICE.json" 2>&1 | tee "$OUT/preprocess.log"
run benchmarks/bench_train.py --device "$DEVICE" $TRAIN --json "$OUT/train_$DEVICE.json" 2>&1 | tee "$OUT/train.log"
$PY benchmarks/plot_results.py "$OUT" --out "$OUT/summary.png" --title "vlm-vision vs reference ($DEVICE)" || true
echo "== summary"; grep -h -A6 "^Tower\|^Preprocess\|^Train" "$OUT"/*.log 2>/dev/null | head -60
