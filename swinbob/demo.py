"""``make demo``: the whole Swin-BOB pipeline end to end on synthetic cohorts, on the CPU.

1. a synthetic UKBOB cohort (4-channel Dixon MRI + TotalVibeSegmentator labels) with a few label
   errors of known kind injected, as TotalVibeSegmentator sometimes makes them;
2. SOLF cleans the labels (``UKBOB/filtering/organ_filtering.py``) and we check which injected
   errors it caught;
3. a tiny Swin-BOB is trained on the cleaned UKBOB set (``UKBOB/main.py``);
4. it is fine-tuned into BTCV on a clean synthetic CT cohort (``BTCV/main.py``);
5. ``BTCV/test_etta.py`` evaluates held-out, domain-shifted CT cases with and without ETTA:
   Dice/HD95 table, NIfTI predictions in each input's space and GIFs.

Every stage calls the same entry point as the command line, with the equivalent command printed
first. Sizes are tiny (feature_size 12, coarse spacing, a few steps) so that it finishes in a few
minutes on two CPU cores: the numbers show the plumbing, not what a real run reaches.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from swinbob import phantoms
from swinbob.files import read_nifti, write_nifti
from swinbob.solf.inject import Injection, inject

log = logging.getLogger("swinbob.demo")

TINY_MODEL = ["--feature_size=12", "--roi_x=32", "--roi_y=32", "--roi_z=64"]
INJECTED_KINDS = ("swap", "move", "shrink", "fragment")


def _run(title: str, script: str, entry: Callable[[list[str]], int], argv: Sequence[str]) -> None:
    """Print the equivalent command, run the entry point in-process and stop on failure."""
    print(f"\n=== {title} ===\n$ python {script} {shlex.join(argv)}", flush=True)
    status = entry(list(argv))
    if status != 0:
        raise SystemExit(f"demo stage '{title}' failed with exit status {status}")


def ukbob_cohort(root: Path, num_cases: int, seed: int) -> list[Injection]:
    """Write the raw UKBOB cohort and inject one error into each of the first few scans."""
    phantoms.write_cohort("ukbob", root, num_cases, seed=seed, overwrite=True)
    rng = np.random.default_rng(seed)
    injections = []
    for index, kind in enumerate(INJECTED_KINDS):
        path = root / "labelsTr" / f"ukbob_{index:04d}.nii.gz"
        label, affine = read_nifti(path)
        result = inject(path.name.removesuffix(".nii.gz"), label, affine, kind, rng)
        if result is not None:
            write_nifti(path, result[0].astype(label.dtype), affine)
            injections.append(result[1])
    return injections


def report_detection(clean_dir: Path, injections: list[Injection]) -> None:
    """Print, for every injected error, what SOLF decided about the corrupted organ(s)."""
    rows = (clean_dir / "report" / "decisions.csv").read_text().splitlines()
    header = rows[0].split(",")
    decisions = {(r["case_id"], int(r["label"])): r for r in (dict(zip(header, line.split(","))) for line in rows[1:])}
    print("\ninjected error -> SOLF decision")
    for injection in injections:
        for organ in injection.primary:
            row = decisions.get((injection.case_id, organ), {"decision": "absent", "reasons": ""})
            print(f"  {injection.case_id} {injection.kind:<9} label {organ:>2}: {row['decision']} ({row['reasons']})")


def print_dice_table(summary_path: Path) -> None:
    """Mean Dice per class of each method (ETTA and none) from test_etta.py's summary JSON."""
    metrics = json.loads(summary_path.read_text())["metrics"]
    methods = list(metrics)
    classes = list(metrics[methods[0]]["dice"]["per_class"])
    print(f"\nmean Dice on held-out, domain-shifted CT cases ({summary_path}):")
    print(f"  {'class':<26}" + "".join(f"{m:>10}" for m in methods))
    for name in classes:
        print(f"  {name:<26}" + "".join(f"{metrics[m]['dice']['per_class'][name]['mean']:>10.3f}" for m in methods))
    print(f"  {'overall':<26}" + "".join(f"{metrics[m]['dice']['overall']['mean']:>10.3f}" for m in methods))


def main(argv: list[str] | None = None) -> int:
    """Run every stage of the demo into ``--out_dir``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--ukbob_cases", type=int, default=24, help="SOLF's population statistics need >= 20")
    parser.add_argument("--btcv_cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Imported here so that ``--help`` stays fast.
    from swinbob.evaluate import main as test_etta
    from swinbob.solf.pipeline import organ_filtering_entry
    from swinbob.train import main as train

    start = time.perf_counter()
    out = args.out_dir.resolve()
    raw, clean = out / "ukbob_raw", out / "ukbob_clean"
    print(f"=== 1. synthetic UKBOB cohort: {args.ukbob_cases} scans, errors injected into {len(INJECTED_KINDS)} ===")
    injections = ukbob_cohort(raw, args.ukbob_cases, args.seed)

    _run("2. SOLF label cleaning", "UKBOB/filtering/organ_filtering.py", organ_filtering_entry, [
        f"--input_dir={raw / 'labelsTr'}", f"--image_dir={raw / 'imagesTr'}", f"--output_dir={clean}",
        "--workers=2", "--val_fraction=0.15", "--overwrite"])
    report_detection(clean, injections)
    data_root = (clean / json.loads((clean / "dataset.json").read_text())["data_root"]).resolve()

    coarse = ["--space_x=4", "--space_y=4", "--space_z=5", "--workers=0", "--num_samples=2", "--optim_lr=1e-3",
              "--warmup_epochs=0", "--val_every=1", "--save_checkpoint", *TINY_MODEL]
    _run("3. train a tiny Swin-BOB on the cleaned UKBOB set", "UKBOB/main.py", lambda a: train(a, default_task="ukbob"), [
        f"--json_list={clean / 'dataset.json'}", f"--data_dir={data_root}", f"--logdir={out / 'runs' / 'ukbob'}",
        "--max_epochs=2", "--max_steps_per_epoch=6", *coarse])

    btcv_train = phantoms.write_cohort("btcv", out / "btcv", args.btcv_cases, seed=args.seed, overwrite=True)
    btcv_test = phantoms.write_cohort("btcv", out / "btcv_shifted", 4, seed=args.seed + 1000, val_fraction=0.75,
                                      shift=phantoms.DomainShift.preset("strong"), overwrite=True)
    ct = ["--space_x=3", "--space_y=3", "--space_z=4"]
    _run("4. fine-tune Swin-BOB into BTCV", "BTCV/main.py", lambda a: train(a, default_task="btcv"), [
        f"--json_list={btcv_train}", f"--data_dir={btcv_train.parent}", f"--logdir={out / 'runs' / 'btcv'}",
        f"--pretrained_dir={out / 'runs' / 'ukbob'}", "--pretrained_model_name=model.pt",
        "--max_epochs=3", "--max_steps_per_epoch=8", *coarse[3:], *ct])

    _run("5. evaluate held-out shifted CT with and without ETTA", "BTCV/test_etta.py",
         lambda a: test_etta(a, default_task="btcv"), [
             f"--json_list={btcv_test}", f"--data_dir={btcv_test.parent}", f"--pretrained_dir={out / 'runs' / 'btcv'}",
             "--pretrained_model_name=model_final.pt", f"--output_dir={out / 'evaluation'}", "--compare_etta",
             "--save_predictions", "--generate_gifs", "--gif_frames=24", "--gif_downsample=1", "--gif_duration=0.2",
             "--overwrite", "--workers=0", "--infer_overlap=0.25", *TINY_MODEL, *ct])
    print_dice_table(out / "evaluation" / "summary.json")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
