"""TotalSegmentator's per-structure output folders as SOLF inputs, merged into a label map on the fly.

TotalSegmentator writes by default one folder per scan with one binary mask per structure
(``case/liver.nii.gz``, ``case/spleen.nii.gz``, ...); only with ``--ml`` one multilabel file. SOLF
reads either: a folder's masks are named by the label set (``--labels totalsegmentator``), each
becomes its ID, and the merged map is measured and cleaned exactly as the equivalent multilabel
file would be. Nothing is written back to the input folder.

Two things a multilabel map cannot hold are reported as notes of the scan (logged, and in
``report/scans.csv``): masks whose name the label set does not know (not used) and voxels claimed
by two masks (set to the ignore value 255: which structure they belong to is unknown, so they
neither train nor count towards either organ's shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swinbob.files import NIFTI_SUFFIXES, NiftiError, check_finite, load_nifti_header, nifti_stem, read_nifti, same_grid
from swinbob.labels import IGNORE_LABEL
from swinbob.solf.features import LabelError


def structure_ids(labels: Mapping[int, str]) -> tuple[tuple[str, int], ...]:
    """``(name, id)`` of every structure of a label set (background left out): what names mean."""
    return tuple((name, label) for label, name in sorted(labels.items()) if label != 0)


def mask_files(folder: Path) -> list[Path]:
    """The NIfTI files directly inside ``folder`` (hidden files left out), sorted by name."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name.endswith(NIFTI_SUFFIXES))


def is_structure_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding per-structure masks (at least one NIfTI file)."""
    try:
        return path.is_dir() and not path.name.startswith(".") and bool(mask_files(path))
    except OSError:
        return False


@dataclass
class LabelSource:
    """A scan's label map as read: voxels, affine, NIfTI header, and notes about the reading."""

    data: np.ndarray
    affine: np.ndarray
    header: Any
    notes: list[str] = field(default_factory=list)


def merge_structures(folder: Path, structures: Mapping[str, int] | tuple[tuple[str, int], ...]) -> LabelSource:
    """One uint8 label map from the masks of ``folder``; masks must share one grid.

    Raises :class:`~swinbob.files.NiftiError` (unreadable mask, another grid) or
    :class:`~swinbob.solf.features.LabelError` (no mask named by the label set), naming the file.
    """
    ids = dict(structures)
    files = mask_files(folder)
    known = sorted(((path, ids[nifti_stem(path.name) or ""]) for path in files if nifti_stem(path.name) in ids),
                   key=lambda item: item[1])
    unknown = [path.name for path in files if nifti_stem(path.name) not in ids]
    if not known:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise LabelError(f"{folder}: none of its {len(files)} mask(s) is named by the label set ({shown}); "
                         "choose the label set they come from with --labels (e.g. totalsegmentator)")
    label: np.ndarray | None = None
    owner: dict[int, str] = {}
    overlaps: dict[tuple[str, ...], int] = {}
    reference: tuple[Path, np.ndarray] | None = None
    header = None
    for path, organ in known:
        mask, affine = read_nifti(path, ndim=3)
        if mask.dtype.kind == "f":
            check_finite(mask, [str(path)])
        if label is None or reference is None:
            label, reference = np.zeros(mask.shape, dtype=np.uint8), (path, affine)
            header = load_nifti_header(path).header
        elif mask.shape != label.shape or not same_grid(affine, reference[1]):
            raise NiftiError(f"{path}: mask grid (shape {mask.shape}) differs from that of {reference[0]} "
                             f"(shape {label.shape}); the masks of one scan must share one grid")
        voxels = np.asarray(mask) > 0
        taken = voxels & (label != 0)
        if taken.any():
            for other in np.unique(label[taken]).tolist():
                if other != IGNORE_LABEL:
                    pair = tuple(sorted((owner[other], path.name)))
                    overlaps[pair] = overlaps.get(pair, 0) + int(np.count_nonzero(taken & (label == other)))
            label[taken] = IGNORE_LABEL
            voxels &= ~taken
        label[voxels] = organ
        owner[organ] = path.name
    assert label is not None and reference is not None
    notes = []
    if unknown:
        notes.append(f"{len(unknown)} mask(s) not in the label set, not used: {', '.join(unknown)}")
    notes += [f"{a} and {b} overlap in {n} voxel(s), set to ignore ({IGNORE_LABEL})" for (a, b), n in sorted(overlaps.items())]
    return LabelSource(label, reference[1], header, notes)


def read_label_source(path: str | Path, structures: Mapping[str, int] | tuple[tuple[str, int], ...] = ()) -> LabelSource:
    """A scan's label map: a multilabel NIfTI file as stored, or a folder of masks merged."""
    path = Path(path)
    if path.is_dir():
        return merge_structures(path, structures)
    data, affine = read_nifti(path, ndim=3)
    return LabelSource(data, affine, None)


def label_header(source: LabelSource, path: str | Path) -> Any:
    """The NIfTI header cleaned labels keep: the file's own, or the first mask's for a folder."""
    return source.header if source.header is not None else load_nifti_header(path).header
