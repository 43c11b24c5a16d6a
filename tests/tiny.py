"""The tiny Swin-UNETR every test uses, as a config and as command-line flags.

feature_size 12 and a 32 x 32 x 64 window: a forward pass takes well under a second on a CPU.
A 32^3 window cannot work (Swin-UNETR halves the grid five times: a 1-voxel bottleneck, which
instance normalisation refuses in training), so one axis is 64. A phantom resampled to 4 mm
fits inside one window. Tests whose hand-built volumes are laid out along x pass ``roi=WIDE_ROI``.
"""

import numpy as np

from swinbob.model import ModelConfig

TINY_ROI = (32, 32, 64)
WIDE_ROI = (64, 32, 32)
"""The same window turned: one window holds the evaluation tests' x-long volumes (41 x 25 x 19)."""
TINY_FEATURE_SIZE = 12


def tiny_config(in_channels: int = 1, out_channels: int = 14, roi: tuple[int, int, int] = TINY_ROI) -> ModelConfig:
    """The tiny model for ``in_channels`` inputs and ``out_channels`` outputs (default: BTCV's 1 and 14)."""
    return ModelConfig(in_channels=in_channels, out_channels=out_channels, feature_size=TINY_FEATURE_SIZE, roi=roi)


def tiny_flags(roi: tuple[int, int, int] = TINY_ROI) -> tuple[str, ...]:
    """The tiny model on the command line (training, evaluation, prediction)."""
    return (f"--feature_size={TINY_FEATURE_SIZE}", *(f"--roi_{axis}={size}" for axis, size in zip("xyz", roi)))


TINY_FLAGS = tiny_flags()
TINY_TRAIN_FLAGS = (*TINY_FLAGS, "--space_x=4", "--space_y=4", "--space_z=4")
"""The tiny model on phantoms resampled to 4 mm: one window holds a whole case."""


# Irregular data: real scans are rarely stored in RAS order with cubic voxels, and organs touch.
# Each geometry has three different voxel sizes, so that any mix-up of axes changes a result.
PERMUTED_AFFINE = np.array([[0, 0, -4.0, 60.0], [-0.9, 0, 0, 40.0], [0, 1.2, 0, -20.0], [0, 0, 0, 1]])
"""A sagittal acquisition: array axes point P, S and L (0.9, 1.2, 4.0 mm): RAS spacing (4.0, 0.9, 1.2)."""
PERMUTED_RAS_SPACING = (4.0, 0.9, 1.2)
_TILT = np.deg2rad(20.0)
OBLIQUE_AFFINE = np.array([
    [-np.sin(_TILT) * 2.0, np.cos(_TILT) * 0.7, 0, 5.0],
    [np.cos(_TILT) * 2.0, np.sin(_TILT) * 0.7, 0, -3.0],
    [0, 0, 3.0, 7.0],
    [0, 0, 0, 1],
])
"""Array axes 20 degrees off A and R, then S (2.0, 0.7, 3.0 mm): nearest RAS spacing (0.7, 2.0, 3.0)."""
OBLIQUE_RAS_SPACING = (0.7, 2.0, 3.0)
ANISOTROPIC_AFFINE = np.diag([1.0, 1.5, 2.5, 1.0])
"""Stored in RAS order with three different voxel sizes (1.0, 1.5, 2.5 mm)."""
IRREGULAR_AFFINES = {"permuted": PERMUTED_AFFINE, "oblique": OBLIQUE_AFFINE, "anisotropic": ANISOTROPIC_AFFINE}


def corner_touching_labels() -> np.ndarray:
    """A 12^3 label volume whose organs touch only at a corner or an edge.

    Organ 1: two 2^3 cubes sharing one corner (one component with 26-connectivity, two with 6).
    Organ 2: two 2^3 cubes sharing one edge (one with 18 or 26, two with 6); organ 3: two cubes apart.
    """
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:3, 1:3, 1:3], labels[3:5, 3:5, 3:5] = 1, 1
    labels[7:9, 1:3, 1:3], labels[9:11, 3:5, 1:3] = 2, 2
    labels[1:3, 8:10, 8:10], labels[8:10, 8:10, 8:10] = 3, 3
    return labels
