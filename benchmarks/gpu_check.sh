#!/usr/bin/env bash
# The GPU check in one prepared run: install what the GPU machine lacks, run `pytest -m gpu`, then the
# GPU benchmarks, all under 8 minutes on an H100/H200; everything goes to $OUT (or ./out) and a short
# summary is printed at the end.
#
# 1. Here, once (needs PyPI): fetch the wheels the GPU machine lacks into .whl/ (git-ignored, ~48 MiB):
#      bash benchmarks/gpu_check.sh fetch-wheels
# 2. On the GPU machine, through the device tool, exactly:
#      run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#    Rerun only some stages (names below) when time is short:
#      run(command="STAGES='train graphs' bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=300)
# 3. Dry run of the same steps on a CPU (tiny sizes, VLM_VISION_TEST_DEVICE=cpu for the tests):
#      DEVICE=cpu bash benchmarks/gpu_check.sh
#
# Stages, in order (STAGES picks some): pytest, tower (ViT-L/14@336 bf16 batch 256: ours, compiled, FP8,
# FP8 + compiled vs CLIPVisionModel(output_hidden_states=True)), train (7B-shaped LoRA step vs
# LlavaNextVideoForConditionalGeneration + peft, with a profile), graphs (batch 32, CUDA graphs),
# preprocess. Each stage has its own time limit and is skipped, saying so, once BUDGET seconds are spent.
# Files under $OUT (the device tool returns at most 8, flat): log.txt (all output), env.txt,
# pytest.txt, tower_b256.json, train.json, train_profile.txt, tower_b32.json, preprocess.json.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="decord==0.6.0 av==18.1.0"  # missing on the GPU machine (see KINDS.md's package list); cp312, x86-64

if [ "${1:-}" = fetch-wheels ]; then
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
  exit
fi

export OUT=${OUT:-out}
DEVICE=${DEVICE:-cuda}
STAGES=${STAGES:-pytest tower train graphs preprocess}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!
START=$SECONDS
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLM_VISION_TEST_DEVICE=$DEVICE

if [ "$DEVICE" = cuda ]; then
  BUDGET=${BUDGET:-450}; SLOW=1
  TOWER="--variant ViT-L/14@336 --dtype bfloat16 --runs 10 --warmup 3"; B1=256; B2=32
  TRAIN="--preset 7b --runs 3 --warmup 2 --rounds 1"; PRE="--runs 10"
else
  BUDGET=${BUDGET:-3000}; SLOW=8  # stage limits x8: a shared 2-core CPU, compiling C++ for inductor
  TOWER="--variant ViT-B/32 --dtype bfloat16 --runs 1 --warmup 0"; B1=4; B2=2
  TRAIN="--preset small --runs 1 --warmup 0 --rounds 1"; PRE="--runs 1 --frames 4"
fi

# stage NAME LIMIT_S COMMAND...: run it if STAGES names it, within its limit (x SLOW) and what is left of BUDGET.
stage() {
  local name=$1 limit=$(($2 * SLOW)); shift 2
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then echo "== $name: SKIPPED, budget of ${BUDGET}s spent"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, at $((SECONDS - START))s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
}

# ----- what the machine lacks: the carried wheels, the repo on the path
if ! "$PY" -c "import decord, av" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site
  else
    echo "decord/av missing and no .whl/ carried: run 'bash benchmarks/gpu_check.sh fetch-wheels' here first"
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  date -u; git log -1 --format='commit %H %s' 2>/dev/null
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  "$PY" - <<'EOF'
import platform, torch, transformers, peft, accelerate
print("python", platform.python_version(), "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| accelerate", accelerate.__version__)
for name in ("av", "decord", "numpy"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:  # reported, and the tests that need it will fail loudly
        print(name, "NOT IMPORTABLE:", e)
if torch.cuda.is_available():
    print("cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0), "| capability",
          torch.cuda.get_device_capability(0))
EOF
} 2>&1 | tee "$OUT/env.txt"

TIMEOUT_FLAG=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=150")
stage pytest 210 bash -c 'set -o pipefail; "$@" 2>&1 | tee "$OUT/pytest.txt" | grep -E "^(measured|FAILED|ERROR)|passed|failed"' _ \
  "$PY" -m pytest -m gpu tests/gpu -rA -q -p no:cacheprovider $TIMEOUT_FLAG
stage tower 150 "$PY" benchmarks/bench_tower.py --device "$DEVICE" $TOWER --batch $B1 --compile --fp8 \
  --json "$OUT/tower_b$B1.json"
rm -f "$OUT/train_profile.txt"
stage train 150 "$PY" benchmarks/bench_train.py --device "$DEVICE" $TRAIN --json "$OUT/train.json" \
  --profile "$OUT/train_profile.txt"
stage graphs 90 "$PY" benchmarks/bench_tower.py --device "$DEVICE" $TOWER --batch $B2 \
  --compile-mode reduce-overhead --json "$OUT/tower_b$B2.json"
stage preprocess 40 "$PY" benchmarks/bench_preprocess.py --device "$DEVICE" $PRE --json "$OUT/preprocess.json"
[ "$B1" = 256 ] || mv -f "$OUT/tower_b$B1.json" "$OUT/tower_b256.json" 2>/dev/null  # fixed names for the summary
[ "$B2" = 32 ] || mv -f "$OUT/tower_b$B2.json" "$OUT/tower_b32.json" 2>/dev/null

echo "== summary ($DEVICE, $((SECONDS - START))s in all)"
"$PY" benchmarks/gpu_summary.py "$OUT"
exec >&- 2>&-; wait "$TEE"  # log.txt complete before the command returns
