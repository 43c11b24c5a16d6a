#!/bin/bash
# Re-apply each hand-made science mutant (two reviews of seven) in a scratch copy of HEAD, run the test
# that must catch it, and print the outcome (each line must report failures); the working tree is
# never touched. Usage: tests/reapply_mutants.sh [python]  (see tests/mutation_equivalents.md)
set -u
PY=${1:-$(pwd)/.venv/bin/python}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
git archive HEAD | tar -x -C "$SCRATCH"
cd "$SCRATCH"
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
check() {  # file, sed expression, tests
  cp "$1" "$1.orig"; sed -i "$2" "$1"
  if cmp -s "$1" "$1.orig"; then echo "NOT APPLIED: $1"; else
    out=$($PY -m pytest -q -p no:warnings -p no:cacheprovider $3 2>&1 | tail -1); echo "$1 :: $out"; fi
  mv "$1.orig" "$1"
}
check swinbob/infer/metrics.py 's/generate_binary_structure(3, 1)/generate_binary_structure(3, 3)/' "tests/test_metrics.py"
check swinbob/train/losses.py 's|ce = ce_sum / valid.sum().clamp_min(1)|ce = ce_sum / valid.numel()|' "tests/test_train_losses.py -k valid_voxels"
check swinbob/infer/etta.py 's/if fg_adapted < (1.0 - collapse) \* source_foreground:/if fg_adapted < collapse * source_foreground:/' "tests/test_etta.py -k collapse"
check swinbob/infer/etta.py 's/    fg_coords = torch.nonzero(fg)$/    fg_coords = torch.nonzero(torch.ones_like(fg))/' "tests/test_etta.py -k centred"
check swinbob/infer/evaluate.py 's/        if outcome.applied:/        if False:/' "tests/test_etta_end_to_end.py"
check swinbob/solf/decide.py 's/(blame_l | ~one_sided)/blame_l/; s/(blame_r | ~one_sided)/blame_r/' "tests/test_solf_decide.py"
check swinbob/train/engine.py 's/train_loader(train_ds, args.batch_size, args.workers, ctx.rank,/train_loader(train_ds, args.batch_size, args.workers, 0,/' "tests/test_train_distributed.py -k own_shard"
# the second review: behaviours outside the first mutation scope, each pinned by tests/test_oracles.py
check swinbob/data/dataset_task.py 's/            ras\[int(target)\] = zooms\[axis\]/            ras[axis] = zooms[axis]/' "tests/test_oracles.py -k median_spacing"
check swinbob/data/dataset_task.py 's/order = content.get("regions_class_order") or \[\]/order = content.get("regions_class_order") or [max(ids) for ids in region_sets.values()]/' "tests/test_oracles.py -k regions_class_order"
check swinbob/data/dataset_task.py 's/np.percentile(values, \[0.5, 99.5\])/np.percentile(values, [5, 95])/' "tests/test_oracles.py -k ct_window"
check swinbob/infer/statistics.py 's/generate_binary_structure(3, 3)/generate_binary_structure(3, 1)/' "tests/test_oracles.py -k touching"
check swinbob/data/transforms.py 's/        clipped = values.clamp(float(low), float(high))/        clipped = values/' "tests/test_oracles.py -k foreground_zscore"
check swinbob/viz.py 's/np.flip(plane.T, axis=(0, 1))/np.flip(plane.T, axis=0)/' "tests/test_oracles.py -k gif"
check swinbob/data/shifts.py 's/order=1, mode="nearest"/order=0, mode="nearest"/' "tests/test_oracles.py -k thick_slices"
echo "clean:"; $PY -m pytest -q -p no:warnings -p no:cacheprovider tests/test_metrics.py tests/test_train_losses.py tests/test_etta.py tests/test_etta_end_to_end.py tests/test_solf_decide.py tests/test_train_distributed.py tests/test_oracles.py -k "not two_gloo" 2>&1 | tail -1
