"""SOLF on real anatomy: injected automatic-label errors in deformed MNI152 brains, before and after.

Data (real MRI, nothing downloaded): :func:`swinbob.solf.brain_cohort.write_cohort` writes deformed
MNI152 2009 brains (``pip install '.[bench]'`` for the nilearn wheel that holds the template) with
``gm_left``, ``gm_right``, ``wm_left``, ``wm_right`` labels, one injected error in a share of the
subjects (swap, island, fragment, missing slices, grow, shrink) and the intact labels as truth.

Both SOLF versions run as a user runs them, through ``UKBOB/filtering/organ_filtering.py --labels
dataset.json --image_dir imagesTr``: this checkout, and a git ref (default ``main``) exported with
``git archive`` (it gets ``--channel_names T1``, which older versions need for one-channel images).
Scored from the cleaned label maps, per (subject, structure):

* flagged: any voxel of the structure ignored (255) in the cleaned map, or the subject excluded;
* an error is *found* when every structure it corrupted on purpose (``primary``) is flagged;
* precision: flagged structures the injection changed (``touched``) over all flagged structures;
* clean flagged: flagged structures among those no injection changed.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_solf_mri.py --seeds 0 1 2 --subjects 40
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
IGNORE = 255


def export_ref(ref: str, where: Path) -> Path:
    """The tree of git ``ref`` under ``where`` (``git archive``), for the "before" run."""
    where.mkdir(parents=True, exist_ok=True)
    archive = where / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(where / "src", filter="data")
    return where / "src"


def run_solf(source: Path, root: Path, output: Path, extra: list[str]) -> float:
    """``organ_filtering.py`` of the tree ``source`` on the cohort at ``root``; returns seconds."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    probe = subprocess.run([sys.executable, "-c", "import swinbob; print(swinbob.__file__)"], env=env, cwd=source,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not probe.startswith(str(source)):
        raise SystemExit(f"{source}: python imports swinbob from {probe}, not from this tree")
    command = [sys.executable, "UKBOB/filtering/organ_filtering.py", "--input_dir", str(root / "labelsTr"),
               "--image_dir", str(root / "imagesTr"), "--labels", str(root / "dataset.json"),
               "--output_dir", str(output), "--workers", "2", "--no_figure", "--log_level", "WARNING", *extra]
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=source, check=True)
    return time.perf_counter() - start


def score(root: Path, output: Path, labels: dict[int, str]) -> dict:
    """Flags per structure from the cleaned maps against the injections (see the module docstring)."""
    injections = {i["case_id"]: i for i in json.loads((root / "injections.json").read_text())["injections"]}
    cases = sorted(p.name[: -len(".nii.gz")] for p in (root / "labelsTr").glob("*.nii.gz"))
    datalist = json.loads((output / "dataset.json").read_text())
    included = {Path(e["label"]).name[: -len(".nii.gz")] for e in datalist["training"] + datalist["validation"]}
    flagged: dict[tuple[str, int], bool] = {}
    for case in cases:
        auto = np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj)
        cleaned = np.asarray(nib.load(output / "labelsTr" / f"{case}.nii.gz").dataobj) if case in included else None
        for label in labels:
            present = auto == label
            if present.any():
                flagged[(case, label)] = cleaned is None or bool((cleaned[present] == IGNORE).any())
    found, total = Counter(), Counter()
    for case, injection in injections.items():
        total[injection["kind"]] += 1
        found[injection["kind"]] += all(flagged.get((case, p), False) for p in injection["primary"])
    touched = {(c, t) for c, i in injections.items() for t in i["touched"]}
    flags = [key for key, on in flagged.items() if on]
    clean = [key for key in flagged if key not in touched]
    false = [key for key in clean if flagged[key]]
    return {"found": dict(found), "total": dict(total), "true_flags": sum(k in touched for k in flags),
            "flags": len(flags), "clean": len(clean), "clean_flagged": len(false),
            "clean_flagged_by_structure": dict(Counter(labels[k[1]] for k in false))}


def merge(results: list[dict]) -> dict:
    out: dict = defaultdict(Counter)
    for r in results:
        for key in ("found", "total", "clean_flagged_by_structure"):
            out[key].update(r[key])
        for key in ("true_flags", "flags", "clean", "clean_flagged"):
            out["counts"][key] += r[key]
    return out


def row(name: str, merged: dict, kinds: list[str]) -> str:
    found, total, counts = merged["found"], merged["total"], merged["counts"]
    cells = [f"{found[k]}/{total[k]}" for k in kinds]
    recall = sum(found.values()) / max(1, sum(total.values()))
    precision = counts["true_flags"] / max(1, counts["flags"])
    clean = counts["clean_flagged"] / max(1, counts["clean"])
    return (f"| {name} | " + " | ".join(cells) + f" | {sum(found.values())}/{sum(total.values())} ({recall:.1%}) | "
            f"{counts['true_flags']}/{counts['flags']} ({precision:.1%}) | {counts['clean_flagged']}/{counts['clean']} "
            f"({clean:.1%}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one cohort per seed")
    parser.add_argument("--subjects", type=int, default=40, help="training subjects per cohort (SOLF's input)")
    parser.add_argument("--error_share", type=float, default=0.5, help="share of subjects with one injected error")
    parser.add_argument("--before", default="main", help="git ref of the 'before' SOLF ('' to skip)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--solf_flags", nargs=argparse.REMAINDER, default=[],
                        help="more organ_filtering.py flags for both runs (last on the line)")
    args = parser.parse_args()
    from swinbob.data.mni_cohort import STRUCTURE_LABELS, load_template
    from swinbob.solf.brain_cohort import ERROR_KINDS, write_cohort

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_solf_mri_"))
    template = load_template()
    sources = {"after (this tree)": (REPO, [])}
    if args.before:
        sources = {f"before ({args.before})": (export_ref(args.before, work / "before"), ["--channel_names", "T1"]),
                   **sources}
    results: dict[str, list[dict]] = {name: [] for name in sources}
    seconds: dict[str, float] = Counter()
    for seed in args.seeds:
        root = work / f"cohort{seed}"
        if not (root / "dataset.json").exists():
            write_cohort(root, train=args.subjects, test=0, seed=seed, error_share=args.error_share, template=template)
        for index, (name, (source, extra)) in enumerate(sources.items()):
            output = work / f"solf{seed}_{index}"
            shutil.rmtree(output, ignore_errors=True)
            seconds[name] += run_solf(source, root, output, [*extra, *args.solf_flags])
            result = score(root, output, {k: v for k, v in STRUCTURE_LABELS.items() if k})
            results[name].append(result)
            print(f"seed {seed} {name}: {json.dumps(result)}", flush=True)
    kinds = list(ERROR_KINDS)
    print(f"\n{len(args.seeds)} cohort(s) x {args.subjects} subjects, error share {args.error_share}; work folder {work}\n")
    print("| SOLF | " + " | ".join(f"found {k}" for k in kinds) + " | recall | precision | clean flagged |")
    print("| --- | " + " | ".join("---" for _ in kinds) + " | --- | --- | --- |")
    for name, runs in results.items():
        print(row(name, merge(runs), kinds))
    for name, runs in results.items():
        print(f"{name}: clean structures flagged by structure {dict(merge(runs)['clean_flagged_by_structure'])}; "
              f"{seconds[name]:.1f} s of organ_filtering.py in all")
    if len(args.seeds) > 1:
        for name, runs in results.items():
            for seed, result in zip(args.seeds, runs):
                print(f"seed {seed} {name}: " + row(name, merge([result]), kinds))


if __name__ == "__main__":
    main()
