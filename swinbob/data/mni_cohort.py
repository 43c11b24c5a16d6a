"""Real-MRI subjects from the MNI152 2009 template: T1 images with grey/white-matter labels, split by hemisphere.

The template (T1 and grey/white-matter probability maps, 1 mm, RAS) ships inside the ``nilearn``
wheel (``pip install '.[bench]'``); nothing is downloaded. A subject is the template under a
random smooth deformation (affine within ±6° / ±6 %, a smooth displacement of up to ~5 mm, gain
±10 %) resampled to a 3 mm grid of 64³ voxels (192 mm a side, the whole brain). Tissue labels are
the argmax of (other, GM, WM) probabilities; the hemisphere of a voxel is the side of the MNI
midline (x = 0, symmetric template) of the template point it was sampled from, so the split
follows each subject's own deformed midline. MNI x > 0 is the subject's right (RAS).

Label sets: :data:`TISSUE_LABELS` (grey/white matter) and :data:`STRUCTURE_LABELS` (``gm_left``,
``gm_right``, ``wm_left``, ``wm_right``: two left/right pairs for SOLF's side checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from swinbob.errors import ConfigError

SPACING = 3.0
GRID = (64, 64, 64)
"""3 mm grid around the brain (192 mm a side): one 64³ window covers a subject."""
TISSUE_LABELS = {0: "background", 1: "grey_matter", 2: "white_matter"}
STRUCTURE_LABELS = {0: "background", 1: "gm_left", 2: "gm_right", 3: "wm_left", 4: "wm_right"}
TEMPLATE_STEM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


@dataclass(frozen=True)
class Template:
    """The MNI152 2009 T1 (1 mm), its GM/WM probabilities in [0, 1] and its voxel-to-MNI-mm affine."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class Subject:
    """One deformed subject on the 3 mm grid: T1 (float32), tissue labels 0/1 GM/2 WM and MNI x (mm) per voxel."""

    image: np.ndarray
    tissue: np.ndarray
    mni_x: np.ndarray


def nilearn_file(name: str) -> Path:
    """A file of the installed nilearn package's data folder (no download); a :class:`ConfigError` without nilearn."""
    try:
        import nilearn.datasets
    except ImportError as exc:
        raise ConfigError("the MNI152 cohort needs nilearn (its wheel holds the template): pip install '.[bench]'") from exc
    path = Path(nilearn.datasets.__file__).parent / "data" / name
    if not path.is_file():
        raise ConfigError(f"{path}: not in the installed nilearn (version without the MNI152 2009 template?)")
    return path


def load_template() -> Template:
    """The MNI152 2009 T1, GM and WM maps from the nilearn wheel, in the T1's voxel grid."""
    images = [nib.load(nilearn_file(TEMPLATE_STEM.format(k))) for k in ("t1", "gm", "wm")]
    t1, gm, wm = (np.asarray(img.dataobj, dtype=np.float32) for img in images)
    return Template(t1, gm / 255.0, wm / 255.0, images[0].affine)


def grid_affine(grid: tuple[int, int, int] = GRID, spacing: float = SPACING) -> np.ndarray:
    """RAS affine of the subject grid, centred on world (0, 0, 0)."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-spacing * g / 2 for g in grid]
    return affine


def make_subject(template: Template, seed: int, grid: tuple[int, int, int] = GRID, spacing: float = SPACING) -> Subject:
    """The template under the random deformation of ``seed`` on ``grid`` at ``spacing`` mm (see module)."""
    t1, gm, wm = template.t1, template.gm, template.wm
    rng = np.random.default_rng(seed)
    centre = np.array(ndimage.center_of_mass(t1 > 0))
    angles = np.deg2rad(rng.uniform(-6, 6, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        rotation = rotation @ r
    matrix = rotation @ np.diag(rng.uniform(0.94, 1.06, 3)) * spacing  # output voxel -> template voxel (1 mm)
    points = np.stack(np.meshgrid(*[np.arange(g) - g / 2 for g in grid], indexing="ij")).reshape(3, -1)
    coords = matrix @ points + centre[:, None] + rng.uniform(-3, 3, 3)[:, None]
    for axis in range(3):  # smooth displacement, up to ~5 mm
        coarse = rng.normal(0.0, 2.0, (5, 5, 5))
        field = ndimage.zoom(coarse, [g / 5 for g in grid], order=3)[: grid[0], : grid[1], : grid[2]]
        coords[axis] += field.reshape(-1)
    sample = [ndimage.map_coordinates(v, coords, order=1, mode="constant").reshape(grid) for v in (t1, gm, wm)]
    image = sample[0] * rng.uniform(0.9, 1.1)
    tissue = np.argmax(np.stack([1.0 - sample[1] - sample[2], sample[1], sample[2]]), axis=0).astype(np.uint8)
    mni_x = (template.affine[0, :3] @ coords + template.affine[0, 3]).reshape(grid).astype(np.float32)
    return Subject(image.astype(np.float32), tissue, mni_x)


def structure_labels(subject: Subject) -> np.ndarray:
    """``STRUCTURE_LABELS`` of a subject: GM/WM split at MNI x = 0 (x > 0 is the right hemisphere)."""
    right = subject.mni_x > 0
    out = np.zeros(subject.tissue.shape, np.uint8)
    out[(subject.tissue == 1) & ~right] = 1
    out[(subject.tissue == 1) & right] = 2
    out[(subject.tissue == 2) & ~right] = 3
    out[(subject.tissue == 2) & right] = 4
    return out
