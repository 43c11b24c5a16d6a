#!/usr/bin/env bash
# The GPU path in one run (feature_size 48; meant to fit in 9 minutes on one GPU). First, side by
# side and untimed: benchmarks/gpu_e2e.sh (pytest -m gpu; BTCV/main.py trained, compiled and bf16,
# then resumed from last.pt; swinbob predict; test_etta.py --compare_etta --tta flip) and the
# warm-up that compiles the timed graphs into Inductor's cache. Then the rows, through the engine:
# training 14 and 73 outputs against the fp16-AMP reference (patches/s, peak memory), the NIfTI
# data pipeline against in-memory batches, inference of a 240×240×160 phantom against fp32 and
# bf16 window batch 4 (speed, logits error, Dice agreement), and ETTA against plain inference.
# Results: $OUT/e2e/e2e.txt, $OUT/train.json, $OUT/infer.json, their logs, and $OUT/acceptance.txt
# (one line per acceptance criterion, MET / NOT MET; benchmarks/check_acceptance.py).
#
# The device image has PyTorch but not MONAI or nibabel: carry them as wheels. Once, here, in the
# repository root (.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl monai==1.6.1 nibabel==5.4.2
# then run with carry [".whl"] and timeout_s 600:  bash benchmarks/gpu_all.sh
# Stages (warm-up and end-to-end 240 s, training 160 s, inference 130 s at most) have their own
# time limits, so a slow one cannot eat the others' time; partial JSON is written after every
# variant. STAGE=e2e, STAGE=train or STAGE=infer runs one stage only (without the warm-up: the
# compiles then happen in the stage). A stage that misses its target: rerun it with --profile ours
# added. SMOKE=1 PY=.venv/bin/python runs the same script on the CPU at tiny sizes (a check of the
# script, not a measurement).
set -u
OUT=${OUT:-/tmp/swinbob_gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/swinbob_inductor}
WORK=$(mktemp -d /tmp/swinbob_gpu_XXXX)
STAGE=${STAGE:-all}
PY=${PY:-python3}
if [ "${SMOKE:-0}" = 1 ]; then  # a CPU check of this script itself: tiny sizes, no time limits
  SIZE=(--device cpu --feature_size 12 --roi 64 32 32); PHANTOM="96 64 64"; DATA="128 96 64"; VOLUME="128 64 64"
  WARM_VOLUME="64 32 32"; TRAIN_STEPS=(--steps 1 --warmup 1); DATA_STEPS=2; CASES=2; WORKERS=1
  INFER_STEPS=(--repeats 1 --warmup 0 --pretrain_steps 2); LIMITS=(0 0 0)
else
  SIZE=(--feature_size 48 --roi 96); PHANTOM="160 160 128"; DATA="240 240 128"; VOLUME="240 240 160"
  WARM_VOLUME="96 96 96"; TRAIN_STEPS=(--steps 20 --warmup 6); DATA_STEPS=30; CASES=8; WORKERS=12
  INFER_STEPS=(--repeats 3 --warmup 2 --pretrain_steps 150); LIMITS=(240 160 130)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
# shellcheck disable=SC2206
TRAIN=("${SIZE[@]}" --batch 4 --phantom_shape $PHANTOM --workers "$WORKERS" --work_dir "$WORK/train")
INFER=("${SIZE[@]}" --work_dir "$WORK/infer")

if [ "$STAGE" = all ] || [ "$STAGE" = e2e ]; then
  E2E_LIMIT=${LIMITS[0]} OUT=$OUT PY=$PY bash benchmarks/gpu_e2e.sh > "$OUT/e2e.log" 2>&1 &
fi
if [ "$STAGE" = all ]; then
  # Warm-up, nothing timed: the three compiled graphs (training 14 and 73 outputs, inference) are
  # compiled side by side into Inductor's cache, and the phantom cohorts written, so that the timed
  # stages below load their kernels instead of compiling one after the other (3-4 min each, cold).
  tic=$SECONDS
  timeout "${LIMITS[0]}" $PY benchmarks/bench_train.py "${TRAIN[@]}" --variants ours --out_channels 14 --steps 1 \
    --warmup 1 --work_dir "$WORK/warm14" --json "$WORK/warm14.json" > "$WORK/warm14.log" 2>&1 &
  timeout "${LIMITS[0]}" $PY benchmarks/bench_train.py "${TRAIN[@]}" --variants ours --out_channels 73 --steps 1 \
    --warmup 1 --json "$WORK/warm73.json" > "$WORK/warm73.log" 2>&1 &
  # shellcheck disable=SC2086
  timeout "${LIMITS[0]}" $PY benchmarks/bench_infer.py "${INFER[@]}" --variants ours --volume $WARM_VOLUME --repeats 1 \
    --warmup 0 --pretrain_steps 0 --work_dir "$WORK/warm_infer" --json "$WORK/warm_infer.json" > "$WORK/warm_infer.log" 2>&1 &
  (cd benchmarks && timeout "${LIMITS[0]}" $PY -c "import sys; from pathlib import Path; from common import phantom_cohort
shape = tuple(int(s) for s in sys.argv[3].split())
phantom_cohort('btcv', Path(sys.argv[1]) / f\"btcv_{sys.argv[2]}x{'x'.join(map(str, shape))}\", int(sys.argv[2]), shape)" \
    "$WORK/train" "$CASES" "$DATA") &
  wait
  echo "warm-up (compiles, phantoms) and end-to-end run: $((SECONDS - tic)) s"; tail -n 3 "$WORK"/warm*.log
  cat "$OUT/e2e/e2e.txt"
fi
if [ "$STAGE" = e2e ]; then
  wait; cat "$OUT/e2e/e2e.txt"
fi
if [ "$STAGE" = all ] || [ "$STAGE" = train ]; then
  # 14 outputs (BTCV CLI, with the NIfTI pipeline on $CASES phantoms of $DATA) and 73 (UKBOB CLI)
  # shellcheck disable=SC2086
  timeout "${LIMITS[1]}" $PY benchmarks/bench_train.py "${TRAIN[@]}" --out_channels 14 73 --variants ref,ours \
    "${TRAIN_STEPS[@]}" --data_pipeline --data_cases "$CASES" --data_shape $DATA --data_steps "$DATA_STEPS" \
    --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
fi
if [ "$STAGE" = all ] || [ "$STAGE" = infer ]; then
  # shellcheck disable=SC2086
  # recompiles are logged: after the first ETTA case the compiled model recompiles twice (CPU check, RESULTS.md)
  TORCH_LOGS=recompiles timeout "${LIMITS[2]}" $PY benchmarks/bench_infer.py "${INFER[@]}" --volume $VOLUME --variants ref_fp32,ref_bf16_sw4,ours \
    "${INFER_STEPS[@]}" --etta --json "$OUT/infer.json" 2>&1 | tee "$OUT/infer.log"
fi
args=()
[ -f "$OUT/train.json" ] && args+=(--train "$OUT/train.json")
[ -f "$OUT/infer.json" ] && args+=(--infer "$OUT/infer.json")
$PY benchmarks/check_acceptance.py "${args[@]}" | tee "$OUT/acceptance.txt"
