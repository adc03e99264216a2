#!/usr/bin/env bash
# The GPU benchmarks in one prepared run (< 5 minutes on an H100/H200). Results go to $OUT (or ./out).
#   bash benchmarks/gpu_check.sh
# decord is not needed here: the tower and preprocessing benchmarks use no video decoding.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
run() { echo "== $*"; timeout 150 "$PY" "$@" || echo "FAILED ($?): $*"; }
run benchmarks/bench_tower.py --device cuda --dtype bfloat16 --batch 256 --runs 10 --warmup 3 --compile \
    --json "$OUT/tower_bf16_b256.json" 2>&1 | tee "$OUT/tower.log"
run benchmarks/bench_tower.py --device cuda --dtype bfloat16 --batch 32 --runs 10 --warmup 3 \
    --json "$OUT/tower_bf16_b32.json" 2>&1 | tee -a "$OUT/tower.log"
[ -f benchmarks/bench_preprocess.py ] && run benchmarks/bench_preprocess.py --device cuda --json "$OUT/preprocess_cuda.json" 2>&1 | tee "$OUT/preprocess.log"
[ -f benchmarks/bench_train.py ] && run benchmarks/bench_train.py --device cuda --preset 7b --json "$OUT/train_cuda.json" 2>&1 | tee "$OUT/train.log"
echo "== summary"; grep -h -A6 "^Tower\|^Preprocess\|^Train" "$OUT"/*.log 2>/dev/null | head -60
