#!/usr/bin/env bash
# Every GPU row of issue 15 in one go (under 10 minutes on an H100/H200, feature_size 48), through
# the engine: training 14 and 73 outputs against the fp16-AMP reference (patches/s, peak memory),
# the NIfTI data pipeline against in-memory batches, inference of a 240×240×160 phantom against
# fp32 and bf16 window batch 4 (speed, logits error, Dice agreement), and ETTA against plain
# inference. Results: $OUT/train.json, $OUT/infer.json, their logs, and $OUT/acceptance.txt (one
# line per acceptance criterion, MET / NOT MET; benchmarks/check_acceptance.py).
#
# The device image has PyTorch but not MONAI or nibabel: carry them as wheels. Once, here, in the
# repository root (.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl monai==1.6.1 nibabel==5.4.2
# then run with carry [".whl"] and timeout_s 600:  bash benchmarks/gpu_all.sh
# Stages (warm-up 220 s, training 200 s, inference 150 s at most) have their own time limits, so a
# slow one cannot eat the others' time; partial JSON is written after every variant. STAGE=train
# or STAGE=infer runs one stage only (without the warm-up: the compiles then happen in the stage).
# A stage that misses its target: rerun it with --profile ours added.
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

TRAIN=(--feature_size 48 --roi 96 --batch 4 --phantom_shape 160 160 128 --workers 12 --work_dir "$WORK/train")
INFER=(--feature_size 48 --roi 96 --work_dir "$WORK/infer")

if [ "$STAGE" = all ]; then
  # Warm-up, nothing timed: the three compiled graphs (training 14 and 73 outputs, inference) are
  # compiled side by side into Inductor's cache, and the phantom cohorts written, so that the timed
  # stages below load their kernels instead of compiling one after the other (3-4 min each, cold).
  tic=$SECONDS
  timeout 220 python3 benchmarks/bench_train.py "${TRAIN[@]}" --variants ours --out_channels 14 --steps 1 --warmup 1 \
    --work_dir "$WORK/warm14" > "$WORK/warm14.log" 2>&1 &
  timeout 220 python3 benchmarks/bench_train.py "${TRAIN[@]}" --variants ours --out_channels 73 --steps 1 --warmup 1 \
    > "$WORK/warm73.log" 2>&1 &
  timeout 220 python3 benchmarks/bench_infer.py "${INFER[@]}" --variants ours --volume 96 96 96 --repeats 1 --warmup 0 \
    --pretrain_steps 0 --work_dir "$WORK/warm_infer" > "$WORK/warm_infer.log" 2>&1 &
  (cd benchmarks && timeout 220 python3 -c "import sys; from pathlib import Path; from common import phantom_cohort
phantom_cohort('btcv', Path(sys.argv[1]) / 'btcv_8x240x240x128', 8, (240, 240, 128))" "$WORK/train") &
  wait
  echo "warm-up (compiles, phantoms): $((SECONDS - tic)) s"; tail -n 3 "$WORK"/warm*.log
fi
if [ "$STAGE" = all ] || [ "$STAGE" = train ]; then
  # 14 outputs (BTCV CLI, with the NIfTI pipeline on 8 phantoms 240×240×128) and 73 (UKBOB CLI)
  timeout 200 python3 benchmarks/bench_train.py "${TRAIN[@]}" --out_channels 14 73 --variants ref,ours --steps 20 \
    --warmup 6 --data_pipeline --data_cases 8 --data_shape 240 240 128 --data_steps 30 \
    --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
fi
if [ "$STAGE" = all ] || [ "$STAGE" = infer ]; then
  timeout 150 python3 benchmarks/bench_infer.py "${INFER[@]}" --volume 240 240 160 --variants ref_fp32,ref_bf16_sw4,ours \
    --repeats 3 --warmup 2 --pretrain_steps 150 --etta --json "$OUT/infer.json" 2>&1 | tee "$OUT/infer.log"
fi
args=()
[ -f "$OUT/train.json" ] && args+=(--train "$OUT/train.json")
[ -f "$OUT/infer.json" ] && args+=(--infer "$OUT/infer.json")
python3 benchmarks/check_acceptance.py "${args[@]}" | tee "$OUT/acceptance.txt"
