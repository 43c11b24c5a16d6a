"""Tiny labelled datasets with their own dataset.json (``--task auto``), shared by several test modules."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

MRI_NAMES = {1: "cortex_gm", 2: "deep_wm", 3: "ventricle_csf"}
CT_NAMES = {1: "liver", 2: "spleen", 3: "lesion"}


def write_dataset(root: Path, modality: str, num_cases: int = 3, nnunet_style: bool = True) -> Path:
    """Nested-sphere phantoms (36 x 36 x 30 voxels, 2 x 2 x 2.5 mm) with 3 labels and a dataset.json."""
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (36, 36, 30)], indexing="ij"), -1).astype(np.float32)
    entries = []
    for index in range(num_cases):
        centre = np.array([18, 18, 15]) + rng.integers(-2, 3, 3)
        radius = np.linalg.norm((grid - centre) * [2.0, 2.0, 2.5], axis=-1)
        label = np.zeros(radius.shape, np.uint8)
        label[radius < 30], label[radius < 20], label[radius < 8] = 1, 2, 3
        means = {"MRI": [0, 300, 600, 100], "CT": [-1000, 40, 90, 10]}[modality]
        image = np.take(np.asarray(means, np.float32), label) + rng.normal(0, 15, label.shape).astype(np.float32)
        if modality == "MRI":
            image[label == 0] = 0
        for sub, name, array in (("imagesTr", f"case{index}_0000", image), ("labelsTr", f"case{index}", label)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), root / sub / f"{name}.nii.gz")
        entries.append({"image": f"imagesTr/case{index}_0000.nii.gz", "label": f"labelsTr/case{index}.nii.gz"})
    names = MRI_NAMES if modality == "MRI" else CT_NAMES
    content = {"name": f"tiny_{modality}", "training": entries[:-1], "validation": entries[-1:]}
    if nnunet_style:
        content |= {"channel_names": {"0": modality}, "labels": {"background": 0, **{v: k for k, v in names.items()}}}
    else:
        content |= {"modality": {"0": modality}, "labels": {"0": "background", **{str(k): v for k, v in names.items()}}}
    (root / "dataset.json").write_text(json.dumps(content))
    return root / "dataset.json"
