"""Deterministic synthetic cohorts ("phantoms") for the tests and ``make demo``.

No UK Biobank, BTCV or BraTS data ships with Swin-BOB, so everything runs on phantoms written as
real NIfTI files plus a Decathlon-format ``dataset.json``, in the three layouts of the benchmarks:
UKBOB (4-channel Dixon MRI, TotalVibeSegmentator IDs 0..72), BTCV (CT in HU, 13 organs) and BraTS
(4 MRI modalities, NCR/SNFH/ET). A case is fully determined by ``(seed, case_index)``: case 7 is
the same whether 8 or 80 cases are written.

Anatomy (``swinbob.data.anatomy``) is defined in world millimetres and rasterised through the affine of
each case (which is anisotropic, flipped and slightly rotated, as real scans are stored), so labels
sit in the right place whatever the storage orientation. World space is NIfTI RAS+: +x points to the subject's
RIGHT, +y anterior, +z superior (nibabel "Coordinate systems and affines"; ``aff2axcodes(eye(4))``
is ``('R', 'A', 'S')``; MNI x < 0 is the left hemisphere). So the liver has x > 0, the spleen x < 0.
The torso is a miniature (about 1/3 scale) so that the whole body fits the small default grids;
organ sizes and positions vary per case (body size, ~10 % organ size, ~2 mm position, ~8 degrees
rotation), which gives SOLF population statistics that look like a cohort.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from swinbob.data.anatomy import (
    BRATS_GEOMETRY,
    BTCV_FROM_TOTALVIBE,
    BTCV_GEOMETRY,
    TOTALVIBE_IDS,
    UKBOB_GEOMETRY,
    brats_image,
    ct_image,
    dixon_image,
    paint_brain,
    paint_torso,
)
from swinbob.files import atomic_write_text, write_nifti
from swinbob.labels import (
    BRATS_LABELS_2021,
    BRATS_LABELS_2023,
    BTCV_LABELS,
    TOTALVIBE_LABELS,
    ids_by_name,
)
from swinbob.tasks import BRATS_CHANNELS, BTCV_CHANNELS, UKBOB_CHANNELS

TASKS = ("ukbob", "btcv", "brats")
DEFAULT_SHAPES = {"ukbob": (64, 64, 80), "btcv": (64, 64, 48), "brats": (64, 64, 64)}
_CHANNELS = {"ukbob": UKBOB_CHANNELS, "btcv": BTCV_CHANNELS, "brats": BRATS_CHANNELS}
NUM_FOLDS = 5


@dataclass
class PhantomCase:
    """One synthetic scan: channel-first image, raw label IDs of the task, voxel->world affine."""

    case_id: str
    image: np.ndarray  # (C, X, Y, Z) float32
    label: np.ndarray  # (X, Y, Z) uint8
    affine: np.ndarray  # (4, 4) float64, voxel -> world (RAS mm)
    channel_names: tuple[str, ...]


@dataclass(frozen=True)
class DomainShift:
    """Scanner/protocol change for test-time adaptation studies; the defaults mean no shift."""

    bias_field: float = 0.0  # amplitude of a smooth multiplicative bias field (0.3 => +-30 %)
    gamma: float = 1.0  # gamma applied to intensities normalised to 0..1
    noise: float = 0.0  # Gaussian noise std relative to the image's intensity range
    scale: float = 1.0  # global intensity scale factor (relative to the image minimum)

    def __post_init__(self) -> None:
        if not 0.0 <= self.bias_field < 1.0:
            raise ValueError(f"bias_field must be in [0, 1), got {self.bias_field}")
        if self.gamma <= 0 or self.scale <= 0 or self.noise < 0:
            raise ValueError(f"gamma and scale must be > 0 and noise >= 0, got {self}")

    @classmethod
    def preset(cls, name: str) -> DomainShift:
        """Named shifts: ``none``, ``mild`` (bias 15 %, gamma 1.15, noise 2 %) or ``strong``."""
        presets = {"none": {}, "mild": {"bias_field": 0.15, "gamma": 1.15, "noise": 0.02, "scale": 1.1},
                   "strong": {"bias_field": 0.35, "gamma": 1.6, "noise": 0.06, "scale": 1.35}}
        if name not in presets:
            raise ValueError(f"unknown domain shift preset {name!r}; choose one of {sorted(presets)}")
        return cls(**presets[name])

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shift a (C, X, Y, Z) image; all channels share one bias field (one receive coil)."""
        field = 1.0 + self.bias_field * _smooth_field(image.shape[1:], rng)
        shifted = np.empty_like(image, dtype=np.float32)
        for c, channel in enumerate(image):
            low, span = float(channel.min()), max(float(np.ptp(channel)), 1e-6)
            normalised = ((channel - low) / span) ** self.gamma
            noise = rng.normal(0.0, self.noise * span, channel.shape) if self.noise else 0.0
            shifted[c] = low + span * self.scale * field * normalised + noise
        return shifted


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random quadratic polynomial over the grid, scaled to max |value| = 1."""
    axes = np.ogrid[tuple(slice(-1.0, 1.0, complex(0, n)) for n in shape)]
    terms = [*axes, *(a * b for a, b in itertools.combinations_with_replacement(axes, 2))]
    field = sum(rng.uniform(-1.0, 1.0) * term for term in terms)  # broadcasts to the full grid
    return (field / max(float(np.abs(field).max()), 1e-6)).astype(np.float32)


# ------------------------------------------------------------------------------ public cases


def _case_rng(seed: int, case_index: int) -> np.random.Generator:
    if case_index < 0:
        raise ValueError(f"case_index must be >= 0, got {case_index}")
    return np.random.default_rng([seed, case_index])


def _shifted(image: np.ndarray, shift: DomainShift | None, seed: int, case_index: int) -> np.ndarray:
    """Apply ``shift`` with its own random stream, so anatomy and labels do not depend on it."""
    if shift is None or shift == DomainShift():
        return image
    return shift.apply(image, np.random.default_rng([seed, case_index, 1]))


def ukbob_case(case_index: int, seed: int = 0, shape: tuple[int, int, int] = (64, 64, 80),
               shift: DomainShift | None = None) -> PhantomCase:
    """Dixon body MRI (fat, in_phase, opposed_phase, water) with TotalVibeSegmentator labels."""
    rng = _case_rng(seed, case_index)
    canvas = UKBOB_GEOMETRY.canvas(shape, rng)
    paint_torso(canvas, rng)
    image = _shifted(dixon_image(canvas.tissue, rng), shift, seed, case_index)
    return PhantomCase(f"ukbob_{case_index:04d}", image, canvas.tissue, canvas.affine, UKBOB_CHANNELS)


def btcv_case(case_index: int, seed: int = 0, shape: tuple[int, int, int] = (64, 64, 48),
              shift: DomainShift | None = None) -> PhantomCase:
    """Abdominal CT in HU (rounded, -1024..3071) with the 13 BTCV organ labels."""
    rng = _case_rng(seed, case_index)
    canvas = BTCV_GEOMETRY.canvas(shape, rng)
    paint_torso(canvas, rng)
    image = np.clip(np.round(_shifted(ct_image(canvas.tissue, rng), shift, seed, case_index)), -1024, 3071)
    to_btcv = np.zeros(256, np.uint8)
    btcv_ids = ids_by_name(BTCV_LABELS)
    for totalvibe_name, btcv_name in BTCV_FROM_TOTALVIBE.items():
        to_btcv[TOTALVIBE_IDS[totalvibe_name]] = btcv_ids[btcv_name]
    label = to_btcv[canvas.tissue]
    return PhantomCase(f"img{case_index + 1:04d}", image.astype(np.float32), label, canvas.affine, BTCV_CHANNELS)


def brats_case(case_index: int, seed: int = 0, shape: tuple[int, int, int] = (64, 64, 64),
               shift: DomainShift | None = None, et_label: int = 3) -> PhantomCase:
    """Skull-stripped brain MRI (t1n, t1c, t2w, t2f) with NCR 1, SNFH 2 and ET ``et_label`` (3 or 4)."""
    if et_label not in (3, 4):
        raise ValueError(f"et_label must be 3 (BraTS 2023) or 4 (BraTS 2021), got {et_label}")
    rng = _case_rng(seed, case_index)
    canvas = BRATS_GEOMETRY.canvas(shape, rng)
    paint_brain(canvas, rng)
    image = _shifted(brats_image(canvas.tissue, rng), shift, seed, case_index)
    label = np.where(canvas.tissue <= 3, canvas.tissue, 0).astype(np.uint8)
    label[label == 3] = et_label
    return PhantomCase(f"BraTS-GLI-{case_index:05d}-000", image, label, canvas.affine, BRATS_CHANNELS)


# ------------------------------------------------------------------------------ cohort writer


def _case_files(task: str, case_index: int, case: PhantomCase) -> tuple[list[str], str]:
    """Image paths (one per channel file) and label path, relative to the dataset folder."""
    name = case.case_id
    if task == "ukbob":
        return [f"imagesTr/{name}_{c}.nii.gz" for c in case.channel_names], f"labelsTr/{name}.nii.gz"
    if task == "btcv":
        return [f"imagesTr/img{case_index + 1:04d}.nii.gz"], f"labelsTr/label{case_index + 1:04d}.nii.gz"
    return [f"{name}/{name}-{c}.nii.gz" for c in case.channel_names], f"{name}/{name}-seg.nii.gz"


def _split_cases(num_cases: int, val_fraction: float, seed: int) -> tuple[set[int], list[int]]:
    """Seeded validation indices (>= 1 if num_cases >= 2 and val_fraction > 0) and fold per case."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(num_cases)
    num_val = 0 if num_cases < 2 or val_fraction == 0 else min(max(round(val_fraction * num_cases), 1), num_cases - 1)
    folds = [0] * num_cases
    for rank, index in enumerate(order):
        folds[index] = rank % NUM_FOLDS  # round-robin, like the upstream brats21_folds.json
    return {int(i) for i in order[:num_val]}, folds


def write_cohort(task: str, out_dir: str | Path, num_cases: int, shape: tuple[int, int, int] | None = None,
                 seed: int = 0, shift: DomainShift | None = None, val_fraction: float = 0.25, et_label: int = 3,
                 overwrite: bool = False) -> Path:
    """Write ``num_cases`` phantoms of ``task`` as NIfTI plus a Decathlon dataset.json; return its path.

    Every file is written atomically and dataset.json last, so a folder without it is incomplete.
    An existing dataset.json is only replaced with ``overwrite=True``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    out = Path(out_dir)
    json_path = out / "dataset.json"
    if json_path.exists() and not overwrite:
        raise FileExistsError(f"{json_path} already exists; pass overwrite=True (--overwrite) to replace the cohort")
    shape = tuple(shape or DEFAULT_SHAPES[task])
    validation, folds = _split_cases(num_cases, val_fraction, seed)
    make_case = {"ukbob": ukbob_case, "btcv": btcv_case, "brats": brats_case}[task]
    extra = {"et_label": et_label} if task == "brats" else {}
    labels = {"ukbob": TOTALVIBE_LABELS, "btcv": BTCV_LABELS}.get(
        task, BRATS_LABELS_2023 if et_label == 3 else BRATS_LABELS_2021)
    entries: dict[str, list[dict]] = {"training": [], "validation": []}
    for index in range(num_cases):
        case = make_case(index, seed, shape, shift, **extra)
        images, label = _case_files(task, index, case)
        for rel, channel in zip(images, case.image):
            write_nifti(out / rel, channel.astype(np.int16 if task == "btcv" else np.float32), case.affine)
        write_nifti(out / label, case.label, case.affine)
        entry = {"image": images[0] if len(images) == 1 else images, "label": label}
        if task == "brats":
            entry["fold"] = folds[index]
        entries["validation" if index in validation else "training"].append(entry)
    channels = {str(k): name for k, name in enumerate(_CHANNELS[task])}
    dataset = {
        "name": f"{task}_phantom",
        "description": f"Synthetic {task} phantom cohort (swinbob.data.phantoms, seed {seed}, shape {list(shape)})",
        "tensorImageSize": "4D" if len(channels) > 1 else "3D",
        "modality": channels,
        "channel_names": channels,
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": num_cases,  # all labelled cases, as in the BTCV dataset_0.json
        "phantom": {"task": task, "seed": seed, "shape": list(shape), "val_fraction": val_fraction,
                    "shift": asdict(shift or DomainShift())},
        **entries,
    }
    atomic_write_text(json_path, json.dumps(dataset, indent=2) + "\n")
    return json_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m swinbob.data.phantoms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("--num_cases", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="grid size (default: per task)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift", default="none", choices=("none", "mild", "strong"), help="domain-shift preset")
    for name in ("bias_field", "gamma", "noise", "scale"):
        parser.add_argument(f"--{name}", type=float, help=f"override the preset's {name}")
    parser.add_argument("--val_fraction", type=float, default=0.25)
    parser.add_argument("--et_label", type=int, default=3, choices=(3, 4), help="BraTS ET: 3 (2023) or 4 (2021)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    overrides = {k: v for k in ("bias_field", "gamma", "noise", "scale") if (v := getattr(args, k)) is not None}
    try:
        shift = replace(DomainShift.preset(args.shift), **overrides)
        path = write_cohort(args.task, args.out_dir, args.num_cases, args.size, args.seed, shift,
                            args.val_fraction, args.et_label, args.overwrite)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dataset = json.loads(path.read_text(encoding="utf-8"))
    print(f"wrote {args.num_cases} {args.task} phantom cases ({len(dataset['training'])} training, "
          f"{len(dataset['validation'])} validation) to {path.parent}; datalist {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
