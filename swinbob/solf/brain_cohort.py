"""A real-MRI cohort with automatic-label errors of known kind and place, written as an nnU-Net v2 dataset.

Subjects are deformed MNI152 2009 brains (:mod:`swinbob.data.mni_cohort`) labelled ``gm_left``,
``gm_right``, ``wm_left``, ``wm_right``. The intact labels play the manual truth; the
"automatic" labels are the intact ones with one gross error in a stated share of the training
subjects (default half: a stress level at which cleaning has something to win, and every kind
occurs a few times in a 32-subject cohort), the kinds (:data:`ERROR_KINDS`) in equal numbers,
each as an automatic segmenter fails:

* ``swap``: a left/right pair exchanges labels (a flipped or mis-oriented input);
* ``island``: a ball (radius 2 voxels, 6 mm) of a left structure inside its right twin, or vice versa;
* ``fragment``: three 2³-voxel islands of a structure far (> 20 mm) from it (spurious detections);
* ``missing_slices``: the structure is missing from 5 consecutive axial slices (15 mm);
* ``grow``: the structure leaks into its labelled neighbours until 1.5 times its volume;
* ``shrink``: only the 25 % of the structure nearest its centroid is kept (a partial miss).

Layout under ``root`` (:func:`write_cohort`)::

    imagesTr/{case}_0000.nii.gz   T1 of the training subjects (nnU-Net naming, one channel)
    labelsTr/{case}.nii.gz        automatic labels (with the injected errors): what SOLF cleans
    labelsTrue/{case}.nii.gz      intact labels of the training subjects (the manual truth)
    imagesTs/, labelsTs/          held-out test subjects (intact labels)
    injections.json               the ground truth of every injected error
    dataset.json                  nnU-Net v2 (channel_names, labels, file_ending) plus Decathlon
                                  "training" (automatic labels) and "test" lists, trainable as it is

:func:`write_tissue_cohort` writes a second task on other subjects (grey/white matter without
hemispheres, optionally under a scanner shift of :mod:`swinbob.data.shifts`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from swinbob.data.mni_cohort import (STRUCTURE_LABELS, TISSUE_LABELS, Template, grid_affine, load_template,
                                     make_subject, structure_labels)
from swinbob.data.shifts import apply_shift
from swinbob.errors import ConfigError
from swinbob.files import atomic_write_text, write_nifti
from swinbob.solf.inject import Injection, inject

ERROR_KINDS = ("swap", "island", "fragment", "missing_slices", "grow", "shrink")
ERROR_OPTIONS = {"fragment": {"islands": 3, "size": 2, "min_distance_mm": 20.0}, "island": {"radius": 2},
                 "missing_slices": {"slices": 5, "axis": 2}, "grow": {"factor": 1.5}, "shrink": {"keep_fraction": 0.25}}
"""Parameters of each kind's injector (:mod:`swinbob.solf.inject`), as the module docstring states them."""


@dataclass(frozen=True)
class Cohort:
    """Where :func:`write_cohort` put things: the root, the dataset.json, and the case IDs."""

    root: Path
    dataset_json: Path
    train: tuple[str, ...]
    test: tuple[str, ...]
    injections: tuple[Injection, ...]

    @property
    def corrupted(self) -> tuple[str, ...]:
        """Training cases whose automatic labels carry an injected error."""
        return tuple(dict.fromkeys(i.case_id for i in self.injections))


def _entries(cases: Sequence[str], images: str, labels: str) -> list[dict[str, str]]:
    return [{"image": f"{images}/{c}_0000.nii.gz", "label": f"{labels}/{c}.nii.gz"} for c in cases]


def _nnunet_json(name: str, labels: dict[int, str], train: list[dict], test: list[dict], description: str) -> dict:
    return {"name": name, "description": description, "reference": "MNI152 2009 (ICBM), nilearn wheel",
            "channel_names": {"0": "T1"}, "labels": {v: k for k, v in labels.items()},
            "numTraining": len(train), "file_ending": ".nii.gz", "training": train, "test": test}


def _check_root(root: Path, overwrite: bool) -> None:
    if (root / "dataset.json").exists() and not overwrite:
        raise ConfigError(f"{root}: a cohort is already there (dataset.json); remove it or pass overwrite")
    root.mkdir(parents=True, exist_ok=True)


def check_errors(kinds: Sequence[str], structures: Sequence[str] | None) -> None:
    """Refuse unknown error kinds or structure names (:class:`ConfigError` naming them and the choices)."""
    unknown = sorted((set(structures or ()) - set(STRUCTURE_LABELS.values())) | (set(kinds) - set(ERROR_KINDS)))
    if unknown:
        raise ConfigError(f"unknown structure or error kind {', '.join(unknown)}; structures: "
                          f"{', '.join(n for i, n in STRUCTURE_LABELS.items() if i)}, kinds: {', '.join(ERROR_KINDS)}")


def inject_errors(cases: Sequence[str], labels: dict[str, np.ndarray], affine: np.ndarray, share: float, seed: int,
                  kinds: Sequence[str] = ERROR_KINDS, structures: Sequence[str] | None = None) -> list[Injection]:
    """Corrupt ``labels`` in place: one error in ``round(share · len(cases))`` random cases, kinds in
    turn, each in a random structure of ``structures`` (default: any). One structure and one kind
    make a systematic error, as an automatic segmenter that fails the same way on many scans."""
    check_errors(kinds, structures)
    names = {i: n for i, n in STRUCTURE_LABELS.items() if not structures or n in structures}
    rng = np.random.default_rng([seed, 1])
    chosen = [cases[i] for i in rng.permutation(len(cases))[: int(round(share * len(cases)))]]
    order = list(rng.permutation(len(kinds)))
    done = []
    for index, case in enumerate(chosen):
        kind = kinds[order[index % len(kinds)]]
        result = inject(case, labels[case], affine, kind, rng, labels=names, options=ERROR_OPTIONS)
        if result is None:
            raise RuntimeError(f"{case}: no structure fits an injected {kind!r}")
        labels[case], injection = result
        done.append(injection)
    return done


def write_cohort(root: str | Path, train: int = 32, test: int = 8, seed: int = 0, error_share: float = 0.5,
                 kinds: Sequence[str] = ERROR_KINDS, overwrite: bool = False, template: Template | None = None,
                 structures: Sequence[str] | None = None) -> Cohort:
    """Write ``train`` + ``test`` subjects, the automatic labels with errors and ``dataset.json`` (see module)."""
    root = Path(root)
    check_errors(kinds, structures)
    _check_root(root, overwrite)
    template = template or load_template()
    affine = grid_affine()
    train_ids = [f"sub{i:03d}" for i in range(train)]
    test_ids = [f"sub{i:03d}" for i in range(train, train + test)]
    auto: dict[str, np.ndarray] = {}
    for index, case in enumerate(train_ids + test_ids):
        subject = make_subject(template, seed=seed * 100_000 + index)
        intact = structure_labels(subject)
        split = "Tr" if index < train else "Ts"
        write_nifti(root / f"images{split}" / f"{case}_0000.nii.gz", subject.image, affine)
        write_nifti(root / ("labelsTrue" if split == "Tr" else "labelsTs") / f"{case}.nii.gz", intact, affine)
        if split == "Tr":
            auto[case] = intact
    injections = inject_errors(train_ids, auto, affine, error_share, seed, kinds, structures)
    for case, label in auto.items():
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label, affine)
    atomic_write_text(root / "injections.json", json.dumps(
        {"error_share": error_share, "kinds": list(kinds), "structures": list(structures or []), "options": ERROR_OPTIONS,
         "injections": [{**asdict(i), "touched": sorted(i.touched)} for i in injections]}, indent=1) + "\n")
    content = _nnunet_json("MNI152Hemispheres", STRUCTURE_LABELS, _entries(train_ids, "imagesTr", "labelsTr"),
                           _entries(test_ids, "imagesTs", "labelsTs"),
                           "Deformed MNI152 2009 T1 brains; grey/white matter per hemisphere; automatic training "
                           "labels with injected errors (labelsTr), intact ones in labelsTrue and labelsTs")
    atomic_write_text(root / "dataset.json", json.dumps(content, indent=1) + "\n")
    return Cohort(root, root / "dataset.json", tuple(train_ids), tuple(test_ids), tuple(injections))


def read_injections(root: str | Path) -> list[Injection]:
    """The :class:`Injection` records of a cohort written by :func:`write_cohort`."""
    content = json.loads((Path(root) / "injections.json").read_text(encoding="utf-8"))
    return [Injection(i["case_id"], i["kind"], tuple(i["primary"]), frozenset(i["touched"])) for i in content["injections"]]


def write_tissue_cohort(root: str | Path, cases: Sequence[str], seed: int, shift: str | None = None,
                        severity: int = 2, overwrite: bool = False, template: Template | None = None) -> Path:
    """Subjects with grey/white-matter labels (:data:`TISSUE_LABELS`, no hemispheres), their T1
    under ``shift`` (None: unshifted), as ``images/{case}_0000.nii.gz`` and ``labels/{case}.nii.gz``;
    returns ``dataset.json`` (nnU-Net v2 names, every case in "test"; a trainer picks its own lists)."""
    root = Path(root)
    _check_root(root, overwrite)
    template = template or load_template()
    affine = grid_affine()
    for index, case in enumerate(cases):
        subject = make_subject(template, seed=seed * 100_000 + index)
        image = subject.image if shift is None else apply_shift(subject.image, shift, severity, seed=seed * 100_000 + index)
        write_nifti(root / "images" / f"{case}_0000.nii.gz", image, affine)
        write_nifti(root / "labels" / f"{case}.nii.gz", subject.tissue, affine)
    content = _nnunet_json("MNI152Tissues", TISSUE_LABELS, [], _entries(cases, "images", "labels"),
                           f"Deformed MNI152 2009 T1 brains, grey/white matter; scans under shift {shift} (severity {severity})")
    atomic_write_text(root / "dataset.json", json.dumps(content, indent=1) + "\n")
    return root / "dataset.json"
