"""The UKBOB recipe on real MRI, end to end through the project's own commands.

Claims measured (benchmarks/RESULTS.md, docs/recipe.md):

1. Cleaning pays: ``UKBOB/main.py --task auto`` trained on the automatic labels as they are (raw),
   on SOLF-cleaned labels (``organ_filtering.py --labels dataset.json``; 255 = ignore, excluded
   scans left out) and on the intact labels (oracle), equal steps, several seeds, scored by
   ``test_etta.py`` on intact held-out labels. Also SOLF's (ours and ``--method paper``) precision
   and recall on the injected errors and the label agreement with the intact labels.
2. Pretraining pays: the claim-1 cleaned model (Swin-BOB) fine-tuned (``--pretrained_dir``,
   ``--pretrained_model_name``) into another task (grey/white matter without hemispheres) on scans
   under a scanner shift, with 1, 2 and 4 labelled subjects, against scratch at equal steps.
3. Adaptation: none / flip TTA / ETTA / both (``test_etta.py --compare_etta [--tta flip]``) and flip +
   self-training (``--tta_adapt selftrain``) on the fine-tuned model, on test scans under a second shift.

Data: :mod:`swinbob.solf.brain_cohort` (MNI152 2009 from the nilearn wheel: ``pip install '.[bench]'``).
This script only orchestrates: every model is trained by ``main.py``'s entry, cleaned by
``organ_filtering.py``'s, scored by ``test_etta.py``'s (in-process, each with its own argv and a
log file beside its outputs); it reads their summaries and tabulates.

    python benchmarks/bench_recipe.py all --work_dir /tmp/bench_recipe     # or one stage:
    data | solf | train | evaluate | finetune | adapt | report
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob.files import atomic_write_text  # noqa: E402
from swinbob.infer.cli import main as test_etta_main  # noqa: E402
from swinbob.labels import IGNORE_LABEL  # noqa: E402
from swinbob.solf.brain_cohort import ERROR_KINDS, read_injections, write_cohort, write_tissue_cohort  # noqa: E402
from swinbob.solf.cli import organ_filtering_entry  # noqa: E402
from swinbob.data.mni_cohort import STRUCTURE_LABELS, load_template  # noqa: E402
from swinbob.train.cli import main as main_py  # noqa: E402

STAGES = ("data", "solf", "train", "evaluate", "finetune", "adapt", "report")
VARIANTS = ("raw", "cleaned", "intact")
SOLF_METHODS = ("ours", "paper")
STRUCTURES = {k: v for k, v in STRUCTURE_LABELS.items() if k}
CLAIM3_RUNS = {"none": ("none", "entropy"), "flip": ("flip", "entropy"), "flip_selftrain": ("flip", "selftrain")}
"""Claim-3 ``test_etta.py --compare_etta`` runs: name → (``--tta``, ``--tta_adapt``)."""
CLAIM3_NAMES = {"none": ("none", "ETTA"), "flip": ("flip", "flip + ETTA"), "flip_selftrain": (None, "flip + selftrain")}
"""Table rows of each run's unadapted and adapted results (the third run's unadapted pass repeats ``flip``)."""
ROI = ("64", "32", "32")
"""Patches 192 × 96 × 96 mm: the whole left-right width (the side of a structure is visible), a quarter of the grid."""
log = logging.getLogger("bench_recipe")


def run_command(name: str, entry: Callable[..., int], argv: list[str], logfile: Path, **kwargs: Any) -> float:
    """Run one project entry point in-process with ``argv``, its ``swinbob`` log also in ``logfile``; seconds."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logfile, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("swinbob").addHandler(handler)
    print(f"$ {name} {' '.join(argv)}", flush=True)
    tic = time.perf_counter()
    try:
        code = entry(argv, **kwargs)
    finally:
        logging.getLogger("swinbob").removeHandler(handler)
        handler.close()
    if code != 0:
        raise SystemExit(f"{name} exited {code}; see {logfile}")
    return time.perf_counter() - tic


def write_datalist(path: Path, labels: dict[int, str], train: list[dict], validation: list[dict] | None = None,
                   test: list[dict] | None = None) -> Path:
    """A datalist (paths relative to the work folder) with nnU-Net v2 names, trainable with ``--task auto``."""
    content = {"name": path.stem, "channel_names": {"0": "T1"}, "labels": {v: k for k, v in labels.items()},
               "training": train, "validation": validation or [], "test": test or []}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(content, indent=1) + "\n")
    return path


def entries(cases: list[str], images: str, labels: str) -> list[dict]:
    return [{"image": f"{images}/{c}_0000.nii.gz", "label": f"{labels}/{c}.nii.gz"} for c in cases]


# ---- stages --------------------------------------------------------------------------------------

def stage_data(args: argparse.Namespace, work: Path) -> None:
    """The hemisphere cohort (claim 1) and the tissue task's subjects under two shifts (claims 2, 3)."""
    template = load_template()
    cohort = write_cohort(work / "cohort", train=args.train_subjects, test=args.test_subjects, seed=args.seed,
                          error_share=args.error_share, kinds=args.error_kinds, overwrite=True, template=template,
                          structures=args.error_structures)
    cases = [f"ds{i:03d}" for i in range(args.finetune_pool + args.downstream_test)]
    write_tissue_cohort(work / "downstream", cases, seed=args.seed + 1, shift=args.shift, overwrite=True, template=template)
    write_tissue_cohort(work / "downstream_adapt", cases, seed=args.seed + 1, shift=args.adapt_shift, overwrite=True,
                        template=template)
    print(f"cohort: {len(cohort.train)} training ({len(cohort.corrupted)} with an injected error), "
          f"{len(cohort.test)} test; downstream: {len(cases)} subjects under {args.shift} and {args.adapt_shift}")


def solf_dir(work: Path, method: str) -> Path:
    return work / "solf" / method


def stage_solf(args: argparse.Namespace, work: Path) -> None:
    """``organ_filtering.py`` on the automatic labels, our rule and the paper's."""
    cohort = work / "cohort"
    for method in SOLF_METHODS:
        argv = ["--input_dir", str(cohort / "labelsTr"), "--image_dir", str(cohort / "imagesTr"), "--channel_names", "T1",
                "--labels", str(cohort / "dataset.json"), "--output_dir", str(solf_dir(work, method)),
                "--workers", str(args.workers), "--no_figure", "--overwrite", "--min_population",
                str(min(20, args.train_subjects))]
        argv += ["--method", "paper"] if method == "paper" else shlex.split(args.solf_flags)
        seconds = run_command("organ_filtering.py", organ_filtering_entry, argv, solf_dir(work, method) / "solf.log")
        print(f"SOLF {method}: {seconds:.0f} s")


def cleaned_cases(work: Path, method: str = "ours") -> dict[str, Path]:
    """Case -> cleaned label file of the scans SOLF kept (its dataset.json's training + validation)."""
    path = solf_dir(work, method) / "dataset.json"
    content = json.loads(path.read_text())
    root = (path.parent / content.get("data_root", ".")).resolve()
    return {Path(e["label"]).name.split(".")[0]: root / e["label"] for e in content["training"] + content["validation"]}


def claim1_lists(work: Path) -> dict[str, Path]:
    """Datalists of the three training variants and of the test subjects (intact labels)."""
    content = json.loads((work / "cohort" / "dataset.json").read_text())
    train = [Path(e["label"]).name.split(".")[0] for e in content["training"]]
    test = [Path(e["label"]).name.split(".")[0] for e in content["test"]]
    kept = cleaned_cases(work)
    lists = work / "lists"
    cleaned = [{"image": f"cohort/imagesTr/{c}_0000.nii.gz", "label": str(kept[c].relative_to(work.resolve()))}
               for c in train if c in kept]
    return {
        "raw": write_datalist(lists / "raw.json", STRUCTURE_LABELS, entries(train, "cohort/imagesTr", "cohort/labelsTr")),
        "cleaned": write_datalist(lists / "cleaned.json", STRUCTURE_LABELS, cleaned),
        "intact": write_datalist(lists / "intact.json", STRUCTURE_LABELS, entries(train, "cohort/imagesTr", "cohort/labelsTrue")),
        "test": write_datalist(lists / "test.json", STRUCTURE_LABELS, [], test=entries(test, "cohort/imagesTs", "cohort/labelsTs")),
    }


def train_argv(work: Path, datalist: Path, logdir: Path, steps: int, per_epoch: int, seed: int, lr: float,
               flips: bool, warmup_steps: int, val_every: int | None = None) -> list[str]:
    epochs = max(1, steps // per_epoch)
    argv = ["--task", "auto", "--data_dir", str(work), "--json_list", str(datalist), "--logdir", str(logdir),
            "--feature_size", "12", "--roi_x", ROI[0], "--roi_y", ROI[1], "--roi_z", ROI[2],
            "--max_epochs", str(epochs), "--max_steps_per_epoch", str(per_epoch), "--num_samples", "1",
            "--optim_lr", str(lr), "--warmup_epochs", str(max(1, warmup_steps // per_epoch)), "--workers", "0",
            "--save_checkpoint", "--seed", str(seed), "--log_every", "25", "--device", "cpu", "--infer_overlap", "0.25",
            "--val_every", str(val_every or epochs + 1), "--sw_batch_size", "4", "--compile", "off"]
    if not flips:  # upright scans: the side of a hemisphere is also its position along x
        argv += ["--RandFlipd_prob", "0", "--RandRotate90d_prob", "0"]
    return argv


def stage_train(args: argparse.Namespace, work: Path) -> None:
    """Claim 1: raw / cleaned / intact, every seed, equal steps (``--max_steps_per_epoch`` x epochs)."""
    lists = claim1_lists(work)
    for seed in args.seeds:
        for variant in args.variants:
            logdir = work / "models" / f"claim1_{variant}_s{seed}"
            argv = train_argv(work, lists[variant], logdir, args.steps, args.per_epoch, seed, args.lr, False, 10)
            seconds = run_command("main.py", main_py, argv, logdir.with_suffix(".log"), default_task="ukbob")
            print(f"claim 1 {variant} seed {seed}: {args.steps} steps in {seconds:.0f} s")


def evaluate(work: Path, model_dir: Path, datalist: Path, out: Path, extra: list[str]) -> dict:
    """``test_etta.py`` on a datalist's test split; its summary.json."""
    argv = ["--pretrained_dir", str(model_dir), "--pretrained_model_name", "model_final.pt", "--data_dir", str(work),
            "--json_list", str(datalist), "--split", "test", "--output_dir", str(out), "--device", "cpu", "--workers", "0",
            "--no_save_predictions", "--overwrite", "--infer_overlap", "0.25", *extra]
    run_command("test_etta.py", test_etta_main, argv, out.with_suffix(".log"), default_task="ukbob")
    return json.loads((out / "summary.json").read_text())


def stage_evaluate(args: argparse.Namespace, work: Path) -> None:
    test = work / "lists" / "test.json"
    for seed in args.seeds:
        for variant in args.variants:
            name = f"claim1_{variant}_s{seed}"
            evaluate(work, work / "models" / name, test, work / "eval" / name, ["--no_etta"])


def downstream_lists(args: argparse.Namespace, work: Path, folder: str) -> tuple[dict[int, Path], Path]:
    """Fine-tuning datalists with 1, 2, 4 … labelled subjects (validation: the first test subjects) and the test list."""
    from swinbob.data.mni_cohort import TISSUE_LABELS
    pool = [f"ds{i:03d}" for i in range(args.finetune_pool)]
    test = [f"ds{i:03d}" for i in range(args.finetune_pool, args.finetune_pool + args.downstream_test)]
    val = entries(test[: args.curve_subjects], f"{folder}/images", f"{folder}/labels")
    lists = {n: write_datalist(work / "lists" / f"{folder}_n{n}.json", TISSUE_LABELS,
                               entries(pool[:n], f"{folder}/images", f"{folder}/labels"), val) for n in args.labelled}
    return lists, write_datalist(work / "lists" / f"{folder}_test.json", TISSUE_LABELS, [],
                                 test=entries(test, f"{folder}/images", f"{folder}/labels"))


def pretrained_model(args: argparse.Namespace, work: Path) -> Path:
    """The Swin-BOB model of claim 2: the claim-1 model trained on SOLF-cleaned labels, first seed."""
    return work / "models" / f"claim1_cleaned_s{args.seeds[0]}"


def stage_finetune(args: argparse.Namespace, work: Path) -> None:
    """Claim 2: Swin-BOB (the claim-1 cleaned model) vs scratch into the tissue task, equal steps."""
    lists, test = downstream_lists(args, work, "downstream")
    for n in args.labelled:
        for init in ("swinbob", "scratch"):
            logdir = work / "models" / f"claim2_{init}_n{n}"
            argv = train_argv(work, lists[n], logdir, args.ft_steps, n, 0, args.lr, True, 10,
                              val_every=max(1, args.curve_every // n))
            if init == "swinbob":
                argv += ["--pretrained_dir", str(pretrained_model(args, work)), "--pretrained_model_name", "model_final.pt"]
            seconds = run_command("main.py", main_py, argv, logdir.with_suffix(".log"), default_task="ukbob")
            print(f"claim 2 {init} with {n} labelled: {args.ft_steps} steps in {seconds:.0f} s")
            evaluate(work, logdir, test, work / "eval" / f"claim2_{init}_n{n}", ["--no_etta"])


def stage_adapt(args: argparse.Namespace, work: Path) -> None:
    """Claim 3: none / ETTA, flip / flip+ETTA and flip+self-training on the fine-tuned model, test scans under a second shift."""
    _, test = downstream_lists(args, work, "downstream_adapt")
    model = work / "models" / f"claim2_swinbob_n{max(args.labelled)}"
    for name, (tta, adapt) in CLAIM3_RUNS.items():
        evaluate(work, model, test, work / "eval" / f"claim3_{name}", ["--compare_etta", "--tta", tta, "--tta_adapt", adapt])


# ---- tables ---------------------------------------------------------------------------------------

def read_label(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).astype(np.int16)


def solf_scores(work: Path, method: str) -> dict[str, Any]:
    """SOLF's detection of the injected errors, from the cleaned label maps themselves.

    A structure is flagged when its scan is excluded or any of its voxels changed (became the
    ignore value, or another label: a repaired swap). Recall: injections whose primary structures
    are all flagged. Precision: flags on structures an injection changed, over all flags (an
    excluded scan is one flag, true if it carries an injection). Clean: share of untouched
    structures flagged. Supervision, per error kind (voxels of the included scans): ``wrong``
    where the training label differs from the intact one and is not ignored, ``lost`` where the
    raw label was right and cleaning made it the ignore value.
    """
    cohort = work / "cohort"
    injections = read_injections(cohort)
    kind_of = {i.case_id: i.kind for i in injections}
    kept = cleaned_cases(work, method)
    cases = sorted(p.name.split(".")[0] for p in (cohort / "labelsTr").glob("*.nii.gz"))
    touched = {(i.case_id, s) for i in injections for s in i.touched}
    flagged: set[tuple[str, int]] = set()
    flags = true_flags = 0
    agreement: dict[str, list[float]] = {"raw": [], "cleaned": [], "raw_same_voxels": []}
    supervision: dict[str, Counter] = {}
    for case in cases:
        raw, intact = read_label(cohort / "labelsTr" / f"{case}.nii.gz"), read_label(cohort / "labelsTrue" / f"{case}.nii.gz")
        agreement["raw"].append(mean_dice(raw, intact, np.ones(raw.shape, bool)))
        tally = supervision.setdefault(kind_of.get(case, "none"), Counter())
        tally["raw_wrong"] += int(np.count_nonzero(raw != intact))
        if case not in kept:
            flagged |= {(case, s) for s in STRUCTURES}
            flags += 1
            true_flags += case in kind_of
            tally["excluded_scans"] += 1
            continue
        cleaned = read_label(kept[case])
        scored = cleaned != IGNORE_LABEL
        tally["cleaned_wrong"] += int(np.count_nonzero((cleaned != intact) & scored))
        tally["cleaned_lost"] += int(np.count_nonzero(~scored & (raw == intact)))
        agreement["cleaned"].append(mean_dice(cleaned, intact, scored))
        agreement["raw_same_voxels"].append(mean_dice(raw, intact, scored))
        for s in STRUCTURES:
            if ((raw == s) & (cleaned != s)).any():
                flagged.add((case, s))
                flags += 1
                true_flags += (case, s) in touched
    found = Counter(i.kind for i in injections if all((i.case_id, s) in flagged for s in i.primary))
    kinds = Counter(i.kind for i in injections)
    clean_pairs = [(c, s) for c in cases for s in STRUCTURES if (c, s) not in touched]
    clean_scans = [(c, s) for c in cases for s in STRUCTURES if c not in kind_of]
    return {"recall": sum(found.values()) / max(1, len(injections)), "precision": true_flags / max(1, flags),
            "clean_flagged": sum(p in flagged for p in clean_pairs) / len(clean_pairs),
            "clean_scans_flagged": sum(p in flagged for p in clean_scans) / max(1, len(clean_scans)),
            "per_kind": {k: f"{found[k]}/{kinds[k]}" for k in kinds}, "excluded": len(cases) - len(kept),
            "flags": flags, "agreement": {k: float(np.mean(v)) for k, v in agreement.items() if v},
            "supervision": {k: dict(v) for k, v in sorted(supervision.items())}}


def mean_dice(label: np.ndarray, truth: np.ndarray, scored: np.ndarray) -> float:
    """Mean over structures of the Dice of ``label`` against ``truth`` over the ``scored`` voxels."""
    dices = []
    for s in STRUCTURES:
        a, b = (label == s) & scored, (truth == s) & scored
        total = a.sum() + b.sum()
        if total:
            dices.append(2.0 * (a & b).sum() / total)
    return float(np.mean(dices))


def overall(summary: dict, method: str = "no_etta") -> dict[str, Any]:
    metrics = summary["metrics"][method]
    return {"dice": metrics["dice"]["overall"]["mean"], "hd95": metrics["hd95_mm"]["overall"]["mean"],
            "per_class": {c: v["mean"] for c, v in metrics["dice"]["per_class"].items()}}


def validation_curve(logfile: Path, per_epoch: int) -> list[tuple[int, float]]:
    """(step, mean validation Dice) from a main.py log."""
    pattern = re.compile(r"validation after epoch (\d+): mean Dice ([0-9.]+)")
    return [(int(m.group(1)) * per_epoch, float(m.group(2))) for m in pattern.finditer(logfile.read_text())]


def stage_report(args: argparse.Namespace, work: Path) -> None:
    """Tables (markdown, also ``report.md`` and ``results.json`` in the work folder) and the figure."""
    out: dict[str, Any] = {"solf": {}, "claim1": {}, "claim2": {}, "claim3": {}}
    lines = ["### SOLF on the injected errors (structure level, from the cleaned label maps)", "",
             "| method | recall | precision | untouched structures flagged (all scans / error-free scans) | "
             "excluded scans | recall per kind | label agreement raw / cleaned / raw on cleaned's voxels |",
             "|---|---|---|---|---|---|---|"]
    for method in SOLF_METHODS:
        if (solf_dir(work, method) / "dataset.json").exists():
            s = out["solf"][method] = solf_scores(work, method)
            a = s["agreement"]
            lines.append(f"| {method} | {s['recall']:.2f} | {s['precision']:.2f} | {s['clean_flagged']:.3f} / {s['clean_scans_flagged']:.3f} | {s['excluded']} | "
                         f"{', '.join(f'{k} {v}' for k, v in sorted(s['per_kind'].items()))} | "
                         f"{a['raw']:.4f} / {a.get('cleaned', float('nan')):.4f} / {a.get('raw_same_voxels', float('nan')):.4f} |")
    if "ours" in out["solf"]:
        lines += ["", "### What the training labels teach (SOLF ours; voxels of the training scans)", "",
                  "| error kind | wrong in raw | wrong after cleaning | right in raw, ignored after cleaning | excluded scans |",
                  "|---|---|---|---|---|"]
        for kind, t in out["solf"]["ours"]["supervision"].items():
            lines.append(f"| {kind} | {t.get('raw_wrong', 0)} | {t.get('cleaned_wrong', 0)} | {t.get('cleaned_lost', 0)} | "
                         f"{t.get('excluded_scans', 0)} |")
    lines += ["", "### Claim 1: held-out Dice / HD95 on intact test labels (test_etta.py --no_etta)", "",
              "| training labels | mean Dice per seed | mean Dice (mean ± std over seeds) | HD95 mm | "
              + " | ".join(STRUCTURES.values()) + " |", "|---" * (4 + len(STRUCTURES)) + "|"]
    for variant in VARIANTS:
        runs = [overall(json.loads(p.read_text())) for seed in args.seeds
                if (p := work / "eval" / f"claim1_{variant}_s{seed}" / "summary.json").exists()]
        if not runs:
            continue
        dice = [r["dice"] for r in runs]
        out["claim1"][variant] = {"dice": dice, "hd95": [r["hd95"] for r in runs], "per_class": [r["per_class"] for r in runs]}
        per_class = " | ".join(f"{np.mean([r['per_class'][c] for r in runs]):.4f}" for c in STRUCTURES.values())
        lines.append(f"| {variant} | {', '.join(f'{d:.4f}' for d in dice)} | {np.mean(dice):.4f} ± {np.std(dice):.4f} | "
                     f"{np.mean([r['hd95'] for r in runs]):.2f} | {per_class} |")
    c1 = out["claim1"]
    if all(v in c1 for v in VARIANTS):
        gap = np.mean(c1["intact"]["dice"]) - np.mean(c1["raw"]["dice"])
        closed = (np.mean(c1["cleaned"]["dice"]) - np.mean(c1["raw"]["dice"])) / gap if gap else float("nan")
        out["claim1"]["gap_closed"] = closed
        lines += ["", f"Gap raw → intact: {gap:+.4f}; share closed by cleaning: {closed:.2f}"]
    lines += ["", f"### Claim 2: fine-tuning into grey/white matter under {args.shift} (test_etta.py, "
              f"{args.downstream_test} test subjects)", "",
              "| labelled subjects | Swin-BOB init Dice | scratch Dice | difference | Swin-BOB HD95 | scratch HD95 |",
              "|---|---|---|---|---|---|"]
    for n in args.labelled:
        row = {}
        for init in ("swinbob", "scratch"):
            path = work / "eval" / f"claim2_{init}_n{n}" / "summary.json"
            if path.exists():
                row[init] = overall(json.loads(path.read_text()))
                row[init]["curve"] = validation_curve(work / "models" / f"claim2_{init}_n{n}.log", n)
        if len(row) == 2:
            out["claim2"][n] = row
            lines.append(f"| {n} | {row['swinbob']['dice']:.4f} | {row['scratch']['dice']:.4f} | "
                         f"{row['swinbob']['dice'] - row['scratch']['dice']:+.4f} | {row['swinbob']['hd95']:.2f} | "
                         f"{row['scratch']['hd95']:.2f} |")
    lines += ["", f"### Claim 3: adaptation of the fine-tuned model on test scans under {args.adapt_shift}", "",
              "| method | mean Dice | HD95 mm |", "|---|---|---|"]
    for run, names in CLAIM3_NAMES.items():
        path = work / "eval" / f"claim3_{run}" / "summary.json"
        if path.exists():
            summary = json.loads(path.read_text())
            for method, name in zip(("no_etta", "etta"), names):
                if name:
                    r = out["claim3"][name] = overall(summary, method)
                    lines.append(f"| {name} | {r['dice']:.4f} | {r['hd95']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(work / "report.md", text)
    atomic_write_text(work / "results.json", json.dumps(out, indent=1, default=str) + "\n")
    if out["claim2"] or out["claim1"]:
        plot(out, args, Path(args.figure))


def plot(out: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """Claim 1 bars (held-out Dice per variant, seeds as dots) and claim 2 validation Dice against steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for x, variant in enumerate(v for v in VARIANTS if v in out["claim1"]):
        dice = out["claim1"][variant]["dice"]
        left.bar(x, np.mean(dice), color=("#c44", "#4a4", "#888")[x], alpha=0.6)
        left.plot([x] * len(dice), dice, "ko", ms=4)
        left.text(x, np.mean(dice), f"{np.mean(dice):.3f}", ha="center", va="bottom")
    left.set_xticks(range(len(out["claim1"]) - ("gap_closed" in out["claim1"])),
                    [v for v in VARIANTS if v in out["claim1"]])
    values = [d for v in VARIANTS if v in out["claim1"] for d in out["claim1"][v]["dice"]]
    if values:
        left.set_ylim(min(values) - 0.03, max(values) + 0.02)
    left.set_title("1: training labels → held-out Dice")
    colors = dict(zip(args.labelled, ("#d62728", "#ff7f0e", "#2ca02c", "#1f77b4")))
    for n, row in out["claim2"].items():
        for init, style in (("swinbob", "-"), ("scratch", "--")):
            curve = row[init]["curve"]
            if curve:
                right.plot(*zip(*curve), style, color=colors.get(n), marker="o", ms=3, label=f"{init}, {n} labelled")
    right.set_xlabel("training steps")
    right.set_ylabel("validation mean Dice")
    right.set_title(f"2: fine-tuning under {args.shift} (solid: Swin-BOB)")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure: {path}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=[*STAGES, "all"])
    p.add_argument("--work_dir", default="/tmp/bench_recipe", help="work files (cohort, models, outputs)")
    p.add_argument("--train_subjects", type=int, default=32, help="claim-1 training cohort (SOLF's population)")
    p.add_argument("--test_subjects", type=int, default=8, help="claim-1 held-out subjects")
    p.add_argument("--error_share", type=float, default=0.5, help="share of training subjects with an injected error")
    p.add_argument("--error_kinds", nargs="+", default=list(ERROR_KINDS), choices=ERROR_KINDS,
                   help="kinds of injected errors, in turn (default: all)")
    p.add_argument("--error_structures", nargs="+", default=None, choices=[n for i, n in STRUCTURE_LABELS.items() if i],
                   help="structures the errors go into (default: any); one kind and one structure: a systematic error")
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of every claim-1 variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=240, help="claim-1 training steps (one 64x32x32 patch each)")
    p.add_argument("--per_epoch", type=int, default=16, help="claim-1 steps per epoch (equal for every variant)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--shift", default="gamma", help="scanner shift of the downstream task's scans")
    p.add_argument("--adapt_shift", default="rician_noise", help="claim 3: the test scans' shift")
    p.add_argument("--finetune_pool", type=int, default=4, help="downstream subjects available for fine-tuning")
    p.add_argument("--downstream_test", type=int, default=6, help="downstream test subjects")
    p.add_argument("--labelled", type=int, nargs="+", default=[1, 2, 4], help="labelled subjects to fine-tune with")
    p.add_argument("--ft_steps", type=int, default=120, help="claim-2 steps (Swin-BOB and scratch alike)")
    p.add_argument("--curve_every", type=int, default=30, help="claim 2: validate every this many steps")
    p.add_argument("--curve_subjects", type=int, default=3, help="claim 2: validation subjects for the curve")
    p.add_argument("--workers", type=int, default=2, help="SOLF worker processes")
    p.add_argument("--solf_flags", default="", help="more organ_filtering.py flags for our rule, e.g. "
                   "'--max_rejected_fraction 0 --min_rejected_to_exclude 1' (leave out every scan with a rejected "
                   "structure) or '--no_swap_repair'")
    p.add_argument("--figure", default=str(Path(__file__).resolve().parents[1] / "assets" / "recipe.png"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir).resolve()
    stages = STAGES if args.stage == "all" else (args.stage,)
    funcs = {"data": stage_data, "solf": stage_solf, "train": stage_train, "evaluate": stage_evaluate,
             "finetune": stage_finetune, "adapt": stage_adapt, "report": stage_report}
    for stage in stages:
        tic = time.perf_counter()
        funcs[stage](args, work)
        print(f"== stage {stage}: {time.perf_counter() - tic:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
