"""``make demo``: the whole Swin-BOB pipeline end to end on synthetic cohorts, on the CPU.

1. a synthetic UKBOB cohort (4-channel Dixon MRI + TotalVibeSegmentator labels) with a few label
   errors of known kind injected, as TotalVibeSegmentator sometimes makes them;
2. SOLF cleans the labels (``UKBOB/filtering/organ_filtering.py``) and we check which injected
   errors it caught;
3. a tiny Swin-BOB is pre-trained on the cleaned UKBOB set (``UKBOB/main.py``; a few steps: plumbing);
4. "your own data": a labelled CT set with its own nnU-Net v2 style dataset.json, as a user would
   bring it: by default liver and spleen (``--organs`` adds kidney_right, kidney_left);
5. Swin-BOB is fine-tuned into it with ``--task auto`` (the task read from the dataset.json; the
   organs' head rows start from Swin-BOB's own);
6. ``UKBOB/test_etta.py`` evaluates the held-out cases given only the checkpoint and the data, with
   and without ETTA: Dice/HD95 table, predictions in each input's space, statistics and GIFs.

Every stage calls the same entry point as the command line, with the equivalent command printed
first. Sizes are small (feature_size 12, ROI 32x32x64, 3.5/3.5/2 mm, one whole-volume patch per
step, no augmentation: the scans share one orientation) so that it finishes in minutes on a CPU;
the held-out Dice it reaches is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from swinbob.data import phantoms
from swinbob.files import read_nifti, write_nifti
from swinbob.runtime.logs import configure_logging
from swinbob.solf.inject import Injection, inject

TINY_MODEL = ["--feature_size=12", "--roi_x=32", "--roi_y=32", "--roi_z=64"]
INJECTED_KINDS = ("swap", "move", "shrink", "fragment")
NO_AUGMENTATION = ["--RandFlipd_prob=0", "--RandRotate90d_prob=0", "--RandScaleIntensityd_prob=0",
                   "--RandShiftIntensityd_prob=0"]
"""The demo's scans share one orientation: a few CPU minutes go further without augmentation."""


def _run(title: str, script: str, entry: Callable[[list[str]], int], argv: Sequence[str]) -> float:
    """Print the equivalent command, run the entry point in-process, stop on failure; return its seconds."""
    print(f"\n=== {title} ===\n$ python {script} {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    status = entry(list(argv))
    if status != 0:
        raise SystemExit(f"demo stage '{title}' failed with exit status {status}")
    return time.perf_counter() - start


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


DEMO_ORGANS = {"liver": "liver", "spleen": "spleen", "kidney_right": "right_kidney", "kidney_left": "left_kidney"}
"""Organs the demo's own set can hold: dataset.json name (TotalVibeSegmentator's, so that fine-tuning
starts their head rows from Swin-BOB's) -> BTCV phantom name."""
DEFAULT_ORGANS = ("liver", "spleen")
"""The two large organs: a whole-abdomen 32-voxel-wide patch resolves them, and they are learned in the
demo's budget. The kidneys (~4 voxels across at 3.5 mm) are not (benchmarks/RESULTS.md)."""


def own_dataset(root: Path, organs: Sequence[str], num_train: int, num_test: int, seed: int) -> Path:
    """A user's own labelled CT set: BTCV phantoms with only ``organs`` (names of :data:`DEMO_ORGANS`)
    labelled 1, 2, ... in that order, an nnU-Net v2 style dataset.json (names as keys), ``num_test``
    held-out cases in ``validation``."""
    source = phantoms.write_cohort("btcv", root / "source", num_train + num_test, seed=seed, val_fraction=0.0, overwrite=True)
    content = json.loads(source.read_text())
    btcv_ids = {name: int(i) for i, name in content["labels"].items()}
    lut = np.zeros(256, np.uint8)
    for new_id, organ in enumerate(organs, start=1):
        lut[btcv_ids[DEMO_ORGANS[organ]]] = new_id
    entries = []
    for entry in content["training"]:
        label, affine = read_nifti(source.parent / entry["label"])
        target = root / "labelsTr" / Path(entry["label"]).name
        write_nifti(target, lut[label.astype(np.uint8)], affine)
        entries.append({"image": f"source/{entry['image']}", "label": f"labelsTr/{target.name}"})
    dataset = {
        "name": "demo_abdomen_ct", "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: i for i, name in enumerate(organs, start=1)}},
        "training": entries[:num_train], "validation": entries[num_train:],
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(dataset, indent=1))
    return path


def print_dice_table(summary_path: Path) -> float:
    """Mean Dice per class of each method from test_etta.py's summary JSON; returns the first method's mean."""
    metrics = json.loads(summary_path.read_text())["metrics"]
    methods = list(metrics)
    classes = list(metrics[methods[0]]["dice"]["per_class"])
    print(f"\nmean Dice on held-out cases ({summary_path}):")
    print(f"  {'class':<26}" + "".join(f"{m:>10}" for m in methods))
    for name in classes:
        print(f"  {name:<26}" + "".join(f"{metrics[m]['dice']['per_class'][name]['mean']:>10.3f}" for m in methods))
    print(f"  {'overall':<26}" + "".join(f"{metrics[m]['dice']['overall']['mean']:>10.3f}" for m in methods))
    return float(metrics[methods[0]]["dice"]["overall"]["mean"])


def main(argv: list[str] | None = None) -> int:
    """Run every stage of the demo into ``--out_dir``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--ukbob_cases", type=int, default=24, help="SOLF's population statistics need >= 20")
    parser.add_argument("--ukbob_steps", type=int, default=10, help="pre-training steps of the tiny Swin-BOB (plumbing only)")
    parser.add_argument("--train_cases", type=int, default=10, help="cases of the own CT set used for fine-tuning")
    parser.add_argument("--test_cases", type=int, default=4, help="held-out cases of the own CT set")
    parser.add_argument("--organs", nargs="+", choices=list(DEMO_ORGANS), default=list(DEFAULT_ORGANS),
                        help="labels of the own CT set (default: %(default)s; the kidneys need more steps)")
    parser.add_argument("--finetune_epochs", type=int, default=12, help="epochs of one step per training case")
    parser.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate (cosine to 0, no warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging()
    # Imported here so that ``--help`` stays fast.
    from swinbob.infer.cli import main as test_etta
    from swinbob.solf.cli import organ_filtering_entry
    from swinbob.train.cli import main as train

    if len(set(args.organs)) != len(args.organs):
        parser.error(f"--organs: each organ once, got {' '.join(args.organs)}")
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    out = args.out_dir.resolve()
    raw, clean = out / "ukbob_raw", out / "ukbob_clean"
    print(f"=== 1. synthetic UKBOB cohort: {args.ukbob_cases} scans, errors injected into {len(INJECTED_KINDS)} ===")
    injections = ukbob_cohort(raw, args.ukbob_cases, args.seed)

    seconds["UKBOB cohort"] = time.perf_counter() - start
    seconds["SOLF"] = _run("2. SOLF label cleaning", "UKBOB/filtering/organ_filtering.py", organ_filtering_entry, [
        f"--input_dir={raw / 'labelsTr'}", f"--image_dir={raw / 'imagesTr'}", f"--output_dir={clean}",
        "--workers=2", "--val_fraction=0.15", "--overwrite"])
    report_detection(clean, injections)
    data_root = (clean / json.loads((clean / "dataset.json").read_text())["data_root"]).resolve()

    common = ["--workers=0", "--warmup_epochs=0", "--save_checkpoint", *TINY_MODEL]
    seconds["pre-training"] = _run("3. pre-train a tiny Swin-BOB on the cleaned UKBOB set", "UKBOB/main.py",
         lambda a: train(a, default_task="ukbob"), [
             f"--json_list={clean / 'dataset.json'}", f"--data_dir={data_root}", f"--logdir={out / 'runs' / 'ukbob'}",
             "--space_x=4", "--space_y=4", "--space_z=5", "--max_epochs=1",
             f"--max_steps_per_epoch={args.ukbob_steps}", "--optim_lr=2e-3", "--num_samples=2", *common])

    own = own_dataset(out / "own_ct", args.organs, args.train_cases, args.test_cases, args.seed + 1)
    print(f"\n=== 4. your own labelled set: {own} ({args.train_cases} training, {args.test_cases} held-out CT cases, "
          f"labels {', '.join(args.organs)}) ===")
    seconds["fine-tuning"] = _run("5. fine-tune Swin-BOB into it, the task read from its dataset.json", "UKBOB/main.py",
         lambda a: train(a, default_task="ukbob"), [
             "--task=auto", f"--json_list={own}", f"--data_dir={own.parent}", f"--logdir={out / 'runs' / 'own_ct'}",
             f"--pretrained_dir={out / 'runs' / 'ukbob'}", "--pretrained_model_name=model_final.pt",
             "--space_x=3.5", "--space_y=3.5", "--space_z=2", f"--max_epochs={args.finetune_epochs}", "--val_every=4",
             f"--optim_lr={args.lr}", "--lrschedule=cosine_anneal", "--num_samples=1", *NO_AUGMENTATION, *common])

    seconds["evaluation"] = _run("6. evaluate the held-out cases: checkpoint and data only", "UKBOB/test_etta.py",
         lambda a: test_etta(a, default_task="ukbob"), [
             f"--json_list={own}", f"--data_dir={own.parent}", f"--pretrained_dir={out / 'runs' / 'own_ct'}",
             "--pretrained_model_name=model_final.pt", f"--output_dir={out / 'evaluation'}", "--compare_etta",
             "--generate_gifs", "--gif_frames=24", "--statistics", "--overwrite", "--workers=0"])
    dice = print_dice_table(out / "evaluation" / "summary.json")
    print("\nseconds per stage: " + ", ".join(f"{name} {value:.0f}" for name, value in seconds.items()))
    print(f"demo finished in {time.perf_counter() - start:.0f} s (held-out mean Dice {dice:.3f}); everything is in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
