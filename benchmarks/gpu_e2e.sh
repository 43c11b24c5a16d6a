#!/usr/bin/env bash
# The GPU path as a user runs it, through the command lines: the gpu-marked tests; BTCV/main.py
# on phantoms (feature_size 48, ROI 96, compiled, bf16: the GPU defaults) for one epoch, then
# resumed from last.pt for a second; `swinbob predict` on its checkpoint (predictions checked to
# lie in each input's geometry); test_etta.py --compare_etta --tta flip (Dice per method).
# Called by gpu_all.sh (STAGE=all or STAGE=e2e); runs alone as
#   OUT=/tmp/out bash benchmarks/gpu_e2e.sh          (SMOKE=1 PY=.venv/bin/python: tiny, on the CPU)
# Writes $OUT/e2e/: pytest_gpu.log, train.log, resume.log, predict.log, evaluate.log, e2e.txt
# (one line per step: OK / FAILED) and the evaluation's metrics.csv / summary.json.
set -u
OUT=${OUT:-/tmp/swinbob_gpu_out}
PY=${PY:-python3}
cd "$(dirname "$0")/.."
ROOT=$PWD
E2E="$OUT/e2e"
WORK=$(mktemp -d /tmp/swinbob_e2e_XXXX)
mkdir -p "$E2E"
: > "$E2E/e2e.txt"
if [ "${SMOKE:-0}" = 1 ]; then
  MODEL=(--feature_size=12 --roi_x=64 --roi_y=32 --roi_z=32 --space_x=4 --space_y=4 --space_z=4)
  SHAPE="48 48 40"; CASES=4; STEPS=2; DEVICE=(--device=cpu); TOTAL=1200
else
  MODEL=(--feature_size=48 --roi_x=96 --roi_y=96 --roi_z=96)
  SHAPE="160 160 128"; CASES=6; STEPS=150; DEVICE=(); TOTAL=${E2E_LIMIT:-240}
fi
DEADLINE=$((SECONDS + TOTAL))  # the whole stage's limit, shared by its steps
step() {  # step NAME LOG COMMAND...: run within what is left of the stage's time, record OK / FAILED
  local name=$1 log=$2; shift 2
  local tic=$SECONDS left=$((DEADLINE - SECONDS))
  [ "$left" -gt 0 ] || { echo "FAILED  $name (no time left)" | tee -a "$E2E/e2e.txt"; return; }
  if timeout "$left" "$@" > "$E2E/$log" 2>&1; then
    echo "OK      $name ($((SECONDS - tic)) s)" | tee -a "$E2E/e2e.txt"
  else
    echo "FAILED  $name (exit $?, $((SECONDS - tic)) s; see e2e/$log)" | tee -a "$E2E/e2e.txt"
    tail -n 5 "$E2E/$log"
  fi
}

step "pytest -m gpu" pytest_gpu.log $PY -m pytest -m gpu -q -p no:cacheprovider tests
# shellcheck disable=SC2086
step "phantoms" phantoms.log $PY -m swinbob.data.phantoms --task btcv --out_dir "$WORK/data" --num_cases "$CASES" --size $SHAPE
TRAIN=(--json_list="$WORK/data/dataset.json" --data_dir="$WORK/data" --logdir="$WORK/run" "${MODEL[@]}" "${DEVICE[@]}"
       --batch_size=1 --num_samples=2 --max_steps_per_epoch="$STEPS" --val_every=1 --warmup_epochs=1 --workers=4
       --save_checkpoint)
step "BTCV/main.py, epoch 1" train.log bash -c 'cd "$0/BTCV" && "$1" main.py "${@:2}" --max_epochs=1' "$ROOT" "$PY" "${TRAIN[@]}"
step "BTCV/main.py --resume, epoch 2" resume.log bash -c 'cd "$0/BTCV" && "$1" main.py "${@:2}" --max_epochs=2 --resume' \
  "$ROOT" "$PY" "${TRAIN[@]}"
grep -h "resum" "$E2E/resume.log" | head -n 3 >> "$E2E/e2e.txt"
mkdir -p "$WORK/scans"
cp "$WORK"/data/imagesTr/*.nii.gz "$WORK/scans/" 2>/dev/null
step "swinbob predict" predict.log $PY -m swinbob.commands predict -i "$WORK/scans" -o "$WORK/predict" -m "$WORK/run/model_final.pt" "${DEVICE[@]}"
step "predictions in input geometry" geometry.log $PY - "$WORK/scans" "$WORK/predict/predictions" <<'EOF'
import sys
from pathlib import Path
import nibabel as nib
import numpy as np
scans, preds = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(scans.glob("*.nii.gz"))
assert files, "no scans"
for scan in files:
    image, pred = nib.load(scan), nib.load(preds / scan.name)
    assert pred.shape == image.shape[:3] and np.allclose(pred.affine, image.affine), scan.name
print(f"{len(files)} predictions, each in its input's shape and affine")
EOF
step "test_etta.py --compare_etta --tta flip" evaluate.log bash -c 'cd "$0/BTCV" && "$1" test_etta.py "${@:2}"' "$ROOT" "$PY" \
  --json_list="$WORK/data/dataset.json" --data_dir="$WORK/data" --pretrained_dir="$WORK/run" \
  --pretrained_model_name=model_final.pt --output_dir="$WORK/eval" --compare_etta --tta flip "${DEVICE[@]}"
cp "$WORK"/eval/*.csv "$WORK"/eval/*.json "$E2E/" 2>/dev/null
grep -h "mean Dice\|Dice" "$E2E/evaluate.log" | tail -n 4 >> "$E2E/e2e.txt"
! grep -q FAILED "$E2E/e2e.txt"
