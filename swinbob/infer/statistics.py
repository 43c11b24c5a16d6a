"""Per-structure statistics and probability maps of a prediction, in the input image's own space.

``--statistics`` follows TotalSegmentator's ``--statistics``: per case and structure, the volume
in ml (voxel count × voxel volume from the image's affine), the voxel count, the mean intensity
of the image's first channel inside the structure, the number of connected components (26-
connectivity) and the bounding box (voxel indices, inclusive). ``--save_probabilities`` writes
the class probabilities mapped back to the input grid (as the labels) as a 4D NIfTI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose
from scipy import ndimage

from swinbob.files import load_nifti_header, voxel_spacing, write_nifti
from swinbob.infer.metrics import class_mask
from swinbob.infer.outputs import invert_to_input

_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def structure_statistics(
    labels: np.ndarray, image: np.ndarray, affine: np.ndarray, classes: Mapping[str, Sequence[int]]
) -> dict[str, dict[str, Any]]:
    """``name -> {volume_ml, voxels, mean_intensity, components, bbox}`` for one case.

    ``labels`` and ``image`` share the grid that ``affine`` places in the world (mm); an absent
    structure has volume 0, no mean intensity (None), 0 components and no bounding box (None).
    """
    voxel_ml = float(np.prod(voxel_spacing(affine))) / 1000.0
    stats: dict[str, dict[str, Any]] = {}
    for name, ids in classes.items():
        mask = class_mask(labels, ids)
        count = int(mask.sum())
        entry: dict[str, Any] = {"volume_ml": count * voxel_ml, "voxels": count, "mean_intensity": None,
                                 "components": 0, "bbox": None}
        if count:
            entry["mean_intensity"] = float(image[mask].mean())
            entry["components"] = int(ndimage.label(mask, structure=_FULL_CONNECTIVITY)[1])
            where = np.nonzero(mask)
            entry["bbox"] = [[int(w.min()), int(w.max())] for w in where]
        stats[name] = entry
    return stats


def write_probabilities(
    path: str | os.PathLike,
    probs: torch.Tensor,
    preprocessed_image: torch.Tensor,
    preprocess: Compose,
    reference_image: str | os.PathLike,
    softmax: bool = True,
) -> Path:
    """Probabilities (C, X, Y, Z) on the preprocessed grid → the input grid (X, Y, Z, C), float32 NIfTI.

    Resampled like the labels (nearest neighbour), so that each voxel's probabilities are the ones
    its label was taken from (softmax channels sum to 1). Outside the foreground crop, where the
    prediction is background, softmax tasks get background 1 and region tasks 0 everywhere.
    """
    array = invert_to_input(probs, preprocessed_image, preprocess).numpy()
    reference = load_nifti_header(reference_image)
    spatial = tuple(int(s) for s in reference.shape[:3])
    if tuple(array.shape[1:]) != spatial:
        raise ValueError(f"probabilities of shape {array.shape[1:]} differ from the input image's {spatial} ({reference_image})")
    volume = np.moveaxis(array, 0, -1).astype(np.float32)
    if softmax:
        volume[..., 0][volume.sum(-1) == 0] = 1.0
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm")
    return write_nifti(path, volume, reference.affine, header=header)
