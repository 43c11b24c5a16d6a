"""The tiny Swin-UNETR every test uses, as a config and as command-line flags.

feature_size 12 and a 32 x 32 x 64 window: a forward pass takes well under a second on a CPU.
A 32^3 window cannot work (Swin-UNETR halves the grid five times: a 1-voxel bottleneck, which
instance normalisation refuses in training), so one axis is 64. A phantom resampled to 4 mm
fits inside one window. Tests whose hand-built volumes are laid out along x pass ``roi=WIDE_ROI``.
"""

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
