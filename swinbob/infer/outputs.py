"""The output side of inference: scores to labels, dataset label IDs, back to the input grid, NIfTI files.

Predictions are mapped back to the input grid with MONAI's inverse of the preprocessing
(orientation, resampling, foreground crop), which needs the very
:class:`~monai.transforms.Compose` instance that preprocessed the image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from swinbob.data.transforms import plain_tensor
from swinbob.files import load_nifti_header, write_nifti


def probabilities(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Softmax over channels (``softmax`` tasks) or per-channel sigmoid (``regions`` tasks)."""
    return torch.softmax(logits, dim=1) if mode == "softmax" else torch.sigmoid(logits)


def regions_to_labels(regions: torch.Tensor, et_label: int = 3) -> torch.Tensor:
    """BraTS TC/WT/ET masks (3, ...) → labels: ET → ``et_label``, TC−ET → 1 (NCR), WT−TC → 2 (SNFH)."""
    tc, wt, et = regions.bool()
    labels = torch.zeros(tc.shape, dtype=torch.uint8, device=regions.device)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = et_label
    return labels


def ordered_regions_to_labels(regions: torch.Tensor, region_labels: Sequence[int]) -> torch.Tensor:
    """nnU-Net's rule for region tasks: region i writes ``region_labels[i]``, later regions over earlier ones."""
    labels = torch.zeros(regions.shape[1:], dtype=torch.int16, device=regions.device)
    for mask, value in zip(regions.bool(), region_labels):
        labels[mask] = int(value)
    return labels


def to_labels(scores: torch.Tensor, mode: str, et_label: int = 3, are_logits: bool = True,
              region_labels: Sequence[int] = ()) -> torch.Tensor:
    """Integer labels (X, Y, Z) from logits or probabilities (C, X, Y, Z) of one case.

    Region tasks with ``region_labels`` (from a dataset.json) follow :func:`ordered_regions_to_labels`;
    without them the BraTS TC/WT/ET rule applies.
    """
    if mode == "softmax":
        return scores.argmax(dim=0).to(torch.int16)
    threshold = 0.0 if are_logits else 0.5
    if region_labels:
        return ordered_regions_to_labels(scores > threshold, region_labels)
    return regions_to_labels(scores > threshold, et_label)


def foreground(scores: torch.Tensor, mode: str, are_logits: bool = True) -> torch.Tensor:
    """Voxels (X, Y, Z) predicted as anything but background."""
    if mode == "softmax":
        return scores.argmax(dim=0) != 0
    return (scores > (0.0 if are_logits else 0.5)).any(dim=0)


def map_labels(labels: torch.Tensor, label_map: dict[int, int]) -> torch.Tensor:
    """Model label IDs → dataset IDs through ``label_map``; unmapped IDs become background (0)."""
    size = max(int(labels.max()) if labels.numel() else 0, max(label_map, default=0)) + 1
    lut = torch.zeros(size, dtype=torch.int16)
    for source, target in label_map.items():
        lut[source] = target
    return lut.to(labels.device)[labels.long()]



def invert_to_input(values: torch.Tensor, preprocessed_image: torch.Tensor, preprocess: Compose) -> torch.Tensor:
    """Channels (C, X, Y, Z) on the preprocessed grid → the input image's grid, nearest neighbour, fp32 on the CPU.

    ``preprocessed_image`` is the MetaTensor that ``preprocess`` produced (it carries the stack of
    applied operations), and ``preprocess`` must be that same Compose instance.
    """
    inverter = Invertd(keys="pred", transform=preprocess, orig_keys="image", nearest_interp=True)
    pred = MetaTensor(values.detach().float().cpu())
    return plain_tensor(inverter({"pred": pred, "image": preprocessed_image})["pred"])


def invert_labels(labels: torch.Tensor, preprocessed_image: torch.Tensor, preprocess: Compose) -> np.ndarray:
    """Labels on the preprocessed grid (X, Y, Z) → the input image's grid (see :func:`invert_to_input`)."""
    return np.rint(invert_to_input(labels[None], preprocessed_image, preprocess)[0].numpy()).astype(np.int16)


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint8 when every label fits (all benchmarks), else int16."""
    return np.dtype(np.uint8) if labels.size == 0 or (labels.min() >= 0 and labels.max() < 256) else np.dtype(np.int16)


def write_prediction(path: str | os.PathLike, labels: np.ndarray, reference_image: str | os.PathLike) -> Path:
    """Write ``labels`` atomically with the reference image's affine and header (shape must match)."""
    reference = load_nifti_header(reference_image)
    spatial = tuple(int(s) for s in reference.shape[:3])
    if tuple(labels.shape) != spatial:
        raise ValueError(f"prediction shape {labels.shape} differs from the input image's {spatial} ({reference_image})")
    header = reference.header.copy()
    header.set_data_shape(spatial)  # nibabel sets the scaling of the array it writes (slope 1, intercept 0)
    return write_nifti(path, labels.astype(label_dtype(labels)), reference.affine, header=header)
