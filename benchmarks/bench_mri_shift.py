"""Domain shift on real MRI: grey/white-matter segmentation of the MNI152 2009 T1 under scanner shifts.

Data (real MRI, nothing downloaded): the MNI152 2009c T1 template and its grey- and white-matter
probability maps as shipped inside the ``nilearn`` wheel (``pip install .[bench]``). Random smooth
deformations (a random affine within ±6° / ±6 % and a smooth displacement field of up to ~5 mm)
resampled to a 3 mm grid make the subjects; labels are the argmax of (other, GM, WM) probabilities.
Subjects split into train / validation / test. Shifts (:mod:`swinbob.data.shifts`) have severities
1..3; the shift *types* split into a tuning group (bias field, Gaussian noise, blur), on which
every ETTA setting was chosen with the validation subjects, and a held-out group (gamma, Rician
noise, thick slices, global scaling) reported on the test subjects.

Stages (run in order; each reuses the previous ones' files under ``--work_dir``):

    python benchmarks/bench_mri_shift.py data                    # subjects as NIfTI + datalist
    python benchmarks/bench_mri_shift.py train --recipe old      # zscore_nonzero, reference augmentation
    python benchmarks/bench_mri_shift.py train --recipe fg       # zscore_foreground alone (the MRI default)
    python benchmarks/bench_mri_shift.py train --recipe new      # zscore_foreground + --shift_augment
    python benchmarks/bench_mri_shift.py tune --recipe fg --etta '{"lr": 0.01}'  # validation x tuning shifts
    python benchmarks/bench_mri_shift.py report                  # test x (clean + held-out), none/flip/ETTA/both
    python benchmarks/bench_mri_shift.py all                     # data, old + fg trained and reported

Training and evaluation drive the library the scripts use: ``swinbob.train.engine`` (UKBOB/main.py's
engine) with a three-class task built in :func:`gmwm_task`, and test_etta.py's per-case calls
(``predict_logits``, ``flip_tta_logits``, ``etta_predict``, ``integrate``, ``score_case``; see
:func:`predict_methods`) on each volume normalised as in training. Work files go to ``--work_dir``
(default /tmp/bench_mri_shift); figures and commands: benchmarks/RESULTS.md, "Domain shift on real MRI".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob.train import engine as train  # noqa: E402
from swinbob.data.transforms import intensity_transform  # noqa: E402
from swinbob.runtime.distributed import launch  # noqa: E402
from swinbob.infer.etta import EttaConfig, etta_predict, integrate  # noqa: E402
from swinbob.files import atomic_write_text  # noqa: E402
from swinbob.infer.model_loading import load_inference_model  # noqa: E402
from swinbob.runtime.logs import configure_logging  # noqa: E402
from swinbob.infer.outputs import to_labels  # noqa: E402
from swinbob.infer.window import WindowSettings, predict_logits  # noqa: E402
from swinbob.infer.tta import flip_tta_logits  # noqa: E402
from swinbob.infer.metrics import score_case  # noqa: E402
from swinbob.model import ModelConfig  # noqa: E402
from swinbob.data.mni_cohort import SPACING, load_template, make_subject  # noqa: E402
from swinbob.data.shifts import HELD_OUT_SHIFTS, TUNING_SHIFTS, apply_shift  # noqa: E402
from swinbob.tasks import Intensity, Task  # noqa: E402
from swinbob.train.cli import build_parser, resolve_plan  # noqa: E402

CLASSES = {"grey_matter": (1,), "white_matter": (2,)}
RECIPES = {
    "old": {"intensity": Intensity("zscore_nonzero"), "shift_augment": False},
    "fg": {"intensity": Intensity("zscore_foreground"), "shift_augment": False},
    "new": {"intensity": Intensity("zscore_foreground"), "shift_augment": True},
}
"""old: the reference recipe; fg: the foreground z-score alone; new: foreground z-score + shift augmentation."""
DEFAULT_STEPS = 90
ALL_RECIPES = ("old", "fg")
"""What ``all`` trains and reports: the reference recipe and the MRI default (``new`` is its own stage)."""


def write_subjects(work: Path, train: int, val: int, test: int) -> Path:
    """Write the subjects as NIfTI (RAS, 3 mm; :mod:`swinbob.data.mni_cohort`) and ``dataset.json`` (training / validation / test)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    template = load_template()
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    splits: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    names = ["training"] * train + ["validation"] * val + ["test"] * test
    for index, split in enumerate(names):
        subject = make_subject(template, seed=1000 + index)
        image, label = subject.image, subject.tissue
        entry = {"image": f"sub{index:02d}_t1.nii.gz", "label": f"sub{index:02d}_gmwm.nii.gz"}
        nib.save(nib.Nifti1Image(image, affine), data / entry["image"])
        nib.save(nib.Nifti1Image(label, affine), data / entry["label"])
        splits[split].append(entry)
    datalist = data / "dataset.json"
    atomic_write_text(datalist, json.dumps(splits, indent=1))
    return datalist


def gmwm_task(recipe: str) -> Task:
    """The three-class task (background, GM, WM) of this benchmark, built in Python (one place, so
    that it can become a task read from a dataset.json later). No foreground crop: with a noisy
    background "above zero" is the whole field of view."""
    return Task(
        name="mni_gmwm", channel_names=("T1",), label_map={0: "background", 1: "grey_matter", 2: "white_matter"},
        mode="softmax", spacing=(SPACING,) * 3, intensity=RECIPES[recipe]["intensity"], roi=(64, 64, 64),
        crop_foreground=False, num_samples=1,
    )


def model_dir(work: Path, recipe: str, steps: int) -> Path:
    """Where a recipe trained for ``steps`` lives (``model_<recipe>``, ``model_<recipe>_<steps>steps`` if not 90)."""
    return work / (f"model_{recipe}" if steps == DEFAULT_STEPS else f"model_{recipe}_{steps}steps")


def train_model(args: argparse.Namespace, datalist: Path) -> Path:
    """Train one recipe with the UKBOB/main.py engine; returns ``model_final.pt``."""
    logdir = model_dir(Path(args.work_dir), args.recipe, args.steps)
    argv = ["--data_dir", str(datalist.parent), "--json_list", datalist.name, "--logdir", str(logdir),
            "--in_channels", "1", "--feature_size", "12", "--roi_x", "64", "--roi_y", "64", "--roi_z", "64",
            "--max_epochs", str(args.steps // args.train_subjects), "--val_every", str(args.steps // args.train_subjects),
            "--num_samples", "1", "--optim_lr", str(args.lr), "--warmup_epochs", "2", "--workers", "0",
            "--save_checkpoint", "--seed", "0", "--log_every", "25", "--device", "cpu", "--infer_overlap", "0.5"]
    args_ns = build_parser("ukbob").parse_args(argv)
    plan = resolve_plan(args_ns)
    task = gmwm_task(args.recipe)
    plan = dataclasses.replace(
        plan, task=task, model=dataclasses.replace(plan.model, out_channels=task.out_channels),
        data=dataclasses.replace(plan.data, spacing=task.spacing, intensity=task.intensity,
                                 shift_augment=RECIPES[args.recipe]["shift_augment"]),
    )
    configure_logging()
    if launch(train.train_worker, plan, device_name="cpu") != 0:
        raise SystemExit("training failed")
    return logdir / "model_final.pt"


def load_model(work: Path, recipe: str, steps: int) -> tuple[torch.nn.Module, Task]:
    path = model_dir(work, recipe, steps) / "model_final.pt"
    fallback = ModelConfig(in_channels=1, out_channels=3, feature_size=12, roi=(64, 64, 64))
    model, _, _ = load_inference_model(path, fallback)
    return model.eval(), gmwm_task(recipe)


def case_images(entry: dict[str, str], data: Path) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(nib.load(data / entry["image"]).dataobj, dtype=np.float32),
            np.asarray(nib.load(data / entry["label"]).dataobj).astype(np.int16))


Case = tuple[str, np.ndarray, np.ndarray]
WINDOW = WindowSettings((64, 64, 64), 1, 0.5)
FLIP_AXES = (0,)
"""Flip TTA mirrors left-right only here (2 passes instead of nnU-Net's 8, which ``--tta flip`` does):
the brain is near-symmetric left-right and a small CPU cannot afford 8 passes per case and method."""


def predict_methods(model: torch.nn.Module, x: torch.Tensor, etta: EttaConfig | None,
                    flip_axes: tuple[int, ...] | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Labels of none / ETTA and, with ``flip_axes``, flip / flip+ETTA for one normalised volume (1, 1, X, Y, Z).

    The library calls of test_etta.py (``predict_logits``, ``flip_tta_logits``, ``etta_predict``,
    ``integrate``), arranged so that one adaptation serves both ETTA rows: ``etta_predict`` adapts once
    and predicts the box with the adapted model both plainly and with flip TTA; flip+ETTA integrates
    the flip-TTA source with the flipped adapted prediction (as ``--tta flip`` does), ETTA the plain
    source with the plain adapted prediction (as without ``--tta``). Window centres come from the
    flip-TTA source's foreground; on this one-window grid every window is the whole volume anyway.
    """
    with torch.no_grad():
        sources = {"none": predict_logits(model, x, WINDOW)}
        if flip_axes:
            sources["flip"] = flip_tta_logits(model, x, WINDOW, "softmax", flip_axes, plain=sources["none"])
    if etta is None:
        return {tta: to_labels(logits[0], "softmax") for tta, logits in sources.items()}, {}
    adapted: dict[str, list[torch.Tensor]] = {"none": [], "flip": []}  # one per adapted state

    def predict_adapted(m: torch.nn.Module, image: torch.Tensor, window: WindowSettings) -> torch.Tensor:
        plain = predict_logits(m, image, window)
        adapted["none"].append(plain[0])
        if not flip_axes:
            return plain
        flipped = flip_tta_logits(m, image, window, "softmax", flip_axes, plain=plain)
        adapted["flip"].append(flipped[0])
        return flipped

    outcome = etta_predict(model, x, sources["flip" if flip_axes else "none"], "softmax", etta, WINDOW, predict_adapted)
    labels, records = {}, {}
    for tta, logits in sources.items():
        source = to_labels(logits[0], "softmax")
        labels[tta] = source
        name = "etta" if tta == "none" else "flip+etta"
        labels[name], records[name] = source.clone(), {"applied": False, "fallback": outcome.fallback, **outcome.info}
        if adapted[tta] and outcome.box is not None:
            box = outcome.box
            probs, info = integrate(logits[(0, slice(None), *box)], adapted[tta], "softmax", etta.collapse,
                                    sharpness=etta.sharpness)
            records[name] = {"applied": probs is not None, "fallback": info.get("fallback"), **info}
            if probs is not None:
                labels[name][box] = to_labels(probs, "softmax", are_logits=False)
    return labels, records


def evaluate_cases(model: torch.nn.Module, task: Task, cases: list[Case], etta: EttaConfig | None,
                   flip_axes: tuple[int, ...] | None) -> list[dict[str, Any]]:
    """Per case, method and class: Dice, HD95 (mm), seconds and the ETTA record, on the volume
    normalised as the model was trained (the grid already is the task's RAS 3 mm grid)."""
    normalise = intensity_transform(task.intensity)
    rows = []
    for name, image, label in cases:
        x = torch.as_tensor(normalise({"image": torch.from_numpy(image)[None]})["image"])[None]
        tic = time.perf_counter()
        labels, records = predict_methods(model, x, etta, flip_axes)
        seconds = time.perf_counter() - tic
        for method, pred in labels.items():
            for row in score_case(pred.cpu().numpy(), label, CLASSES, (SPACING,) * 3):
                rows.append({"case": name, "method": method, "seconds": seconds, **row, "etta": records.get(method)})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over cases of each class's Dice and HD95, the mean over classes, and ETTA's record."""
    out: dict[str, Any] = {}
    for name in CLASSES:
        for metric in ("dice", "hd95_mm"):
            values = [r[metric] for r in rows if r["class"] == name and np.isfinite(r[metric])]
            out[f"{name}_{metric}"] = (float(np.mean(values)), float(np.std(values))) if values else (None, None)
    per_case = {}
    for r in rows:
        per_case.setdefault(r["case"], []).append(r["dice"])
    means = [float(np.mean(v)) for v in per_case.values()]
    out["mean_dice"] = (float(np.mean(means)), float(np.std(means)))
    records = {r["case"]: r["etta"] for r in rows if r["etta"]}
    if records:
        applied = [x for x in records.values() if x.get("applied")]
        out["fallback_rate"] = 1 - len(applied) / len(records)
        out["entropy_drop"] = float(np.mean([x["entropy_source"] - x["entropy_adapted"] for x in records.values()
                                             if "entropy_adapted" in x])) if records else None
        out["weight_adapted"] = float(np.mean([x["weight_adapted"] for x in applied])) if applied else None
    out["seconds"] = float(np.mean([r["seconds"] for r in rows]))
    return out


def run_grid(model: torch.nn.Module, task: Task, groups: dict[str, list[Case]], etta: EttaConfig | None,
             flip_axes: tuple[int, ...] | None) -> dict[str, dict[str, Any]]:
    """Summaries keyed ``"<shift>|<method>"`` for every shift group and method."""
    results = {}
    for shift, cases in groups.items():
        tic = time.perf_counter()
        rows = evaluate_cases(model, task, cases, etta, flip_axes)
        print(f"  {shift}: {len(cases)} cases in {time.perf_counter() - tic:.0f} s", flush=True)
        for method in dict.fromkeys(r["method"] for r in rows):
            results[f"{shift}|{method}"] = summarise([r for r in rows if r["method"] == method])
    return results


def print_table(title: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}\n| shift | method | mean Dice | GM Dice | WM Dice | GM HD95 mm | WM HD95 mm | "
          "ETTA entropy drop | adapted weight | fallbacks | s/case |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v, p=3: "n/a" if v is None or v[0] is None else f"{v[0]:.{p}f} ± {v[1]:.{p}f}"  # noqa: E731
    for key, r in results.items():
        shift, method = key.split("|")
        etta = ("", "", "") if "fallback_rate" not in r else (
            f"{r['entropy_drop']:.4f}", "n/a" if r["weight_adapted"] is None else f"{r['weight_adapted']:.3f}",
            f"{r['fallback_rate']:.0%}")
        print(f"| {shift} | {method} | {fmt(r['mean_dice'])} | {fmt(r['grey_matter_dice'])} | {fmt(r['white_matter_dice'])} | "
              f"{fmt(r['grey_matter_hd95_mm'], 1)} | {fmt(r['white_matter_hd95_mm'], 1)} | {' | '.join(etta)} | {r['seconds']:.1f} |")


def etta_config(text: str) -> EttaConfig:
    """``--etta`` JSON overrides of the default :class:`EttaConfig` (``states`` as a list)."""
    overrides = json.loads(text)
    if "states" in overrides:
        overrides["states"] = tuple(overrides["states"])
    return EttaConfig(**overrides)


def print_drop(results: dict[str, dict[str, Any]]) -> None:
    """Per method: clean mean Dice, the mean over the held-out shifts present and the drop between them."""
    print("\n| method | clean | held-out mean | drop |\n|---|---|---|---|")
    for method in dict.fromkeys(key.split("|")[1] for key in results):
        shifted = [results[f"{s}|{method}"]["mean_dice"][0] for s in HELD_OUT_SHIFTS if f"{s}|{method}" in results]
        if f"clean|{method}" in results and shifted:
            clean = results[f"clean|{method}"]["mean_dice"][0]
            print(f"| {method} | {clean:.4f} | {np.mean(shifted):.4f} | {clean - np.mean(shifted):.4f} |")


def tune(args: argparse.Namespace, work: Path, datalist: Path) -> None:
    """ETTA settings ``--etta`` on the validation subjects under the tuning shifts (never the test ones)."""
    entries = json.loads(datalist.read_text())["validation"][: args.subjects]
    groups = shifted_cases(entries, datalist.parent, tuple(args.shifts or ("clean", *TUNING_SHIFTS)), args.severity)
    model, task = load_model(work, args.recipe, args.steps)
    etta = etta_config(args.etta)
    results = run_grid(model, task, groups, etta, None)
    print_table(f"tune {args.recipe} {etta}", results)
    steps = "" if args.steps == DEFAULT_STEPS else f"_{args.steps}steps"
    out = work / "tune" / f"{args.recipe}{steps}_{args.tag or 'default'}.json"
    out.parent.mkdir(exist_ok=True)
    atomic_write_text(out, json.dumps({"etta": dataclasses.asdict(etta), "results": results}, indent=1))


def report(args: argparse.Namespace, work: Path, datalist: Path) -> None:
    """Test subjects, clean and every held-out shift: none / flip / ETTA / flip+ETTA of one recipe."""
    entries = json.loads(datalist.read_text())["test"][: args.subjects]
    groups = shifted_cases(entries, datalist.parent, tuple(args.shifts or ("clean", *HELD_OUT_SHIFTS)), args.severity)
    model, task = load_model(work, args.recipe, args.steps)
    tic = time.perf_counter()
    etta = None if args.no_etta else etta_config(args.etta)
    results = run_grid(model, task, groups, etta, FLIP_AXES)
    print_table(f"report {args.recipe} {etta} ({time.perf_counter() - tic:.0f} s)", results)
    print_drop(results)
    steps = "" if args.steps == DEFAULT_STEPS else f"_{args.steps}steps"
    name = f"report_{args.recipe}{steps}{'_no_etta' if args.no_etta else ''}{'_' + args.tag if args.tag else ''}.json"
    atomic_write_text(work / name, json.dumps({"etta": etta and dataclasses.asdict(etta), "results": results}, indent=1))


def shifted_cases(entries: list[dict[str, str]], data: Path, shifts: tuple[str, ...], severity: int
                  ) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    out: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for shift in shifts:
        cases = []
        for index, entry in enumerate(entries):
            image, label = case_images(entry, data)
            if shift != "clean":
                image = apply_shift(image, shift, severity, seed=index)
            cases.append((entry["image"], image, label))
        out[shift] = cases
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=["data", "train", "tune", "report", "all"])
    p.add_argument("--work_dir", default="/tmp/bench_mri_shift")
    p.add_argument("--recipe", default="fg", choices=list(RECIPES))
    p.add_argument("--train_subjects", type=int, default=6)
    p.add_argument("--val_subjects", type=int, default=3)
    p.add_argument("--test_subjects", type=int, default=6)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (also picks the model of tune/report)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--severity", type=int, default=2)
    p.add_argument("--etta", default="{}", help="JSON of EttaConfig overrides for 'tune', e.g. '{\"lr\": 0.01}'")
    p.add_argument("--tag", default="", help="name of this 'tune' or 'report' result")
    p.add_argument("--no_etta", action="store_true", help="'report': none and flip only (no adaptation)")
    p.add_argument("--shifts", nargs="+", default=None, help="'tune'/'report': only these shift groups")
    p.add_argument("--subjects", type=int, default=None, help="'tune'/'report': only the first N subjects")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    datalist = work / "data" / "dataset.json"
    if args.stage in ("data", "all"):
        tic = time.perf_counter()
        write_subjects(work, args.train_subjects, args.val_subjects, args.test_subjects)
        print(f"subjects written to {datalist.parent} in {time.perf_counter() - tic:.1f} s")
    if args.stage in ("train", "all"):
        for recipe in (ALL_RECIPES if args.stage == "all" else [args.recipe]):
            tic = time.perf_counter()
            train_model(argparse.Namespace(**{**vars(args), "recipe": recipe}), datalist)
            print(f"recipe {recipe}: trained in {time.perf_counter() - tic:.1f} s")
    if args.stage == "tune":
        tune(args, work, datalist)
    if args.stage == "report":
        report(args, work, datalist)
    if args.stage == "all":
        for recipe in ALL_RECIPES:
            report(argparse.Namespace(**{**vars(args), "recipe": recipe}), work, datalist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
