"""Scanner-like intensity and resolution shifts of an MRI volume, each with a severity (1 mild .. 3 strong).

Used to measure how a model and its test-time adaptation cope with domain shift (``benchmarks/
bench_mri_shift.py``, ``tests/test_etta.py``). Every shift is a pure function of the image, the
severity and a numpy ``Generator`` (deterministic for a seed) and returns a new float32 array;
the input is never modified. Noise is added everywhere, background included, as a scanner does.

Magnitudes are relative to the image's 99th percentile so that they do not depend on its units.
The shift *types* are split in two groups (:data:`TUNING_SHIFTS`, :data:`HELD_OUT_SHIFTS`): every
choice (ETTA settings, augmentation) is tuned on the first group and reported on the second.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Shift = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _scale(image: np.ndarray) -> float:
    return float(np.percentile(image, 99)) or 1.0


def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, control: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1] of ``shape``: a ``control``³ grid of uniform values, cubic-upsampled."""
    coarse = rng.uniform(-1.0, 1.0, size=(control,) * len(shape))
    field = ndimage.zoom(coarse, [s / control for s in shape], order=3, mode="nearest")[tuple(slice(0, s) for s in shape)]
    return (field / max(float(np.abs(field).max()), 1e-6)).astype(np.float32)


def bias_field(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative smooth bias: ``image · exp(0.2·severity·field)`` (x0.55..x1.8 at severity 3)."""
    return (image * np.exp(0.2 * severity * smooth_field(image.shape, rng))).astype(np.float32)


def gamma(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast change ``max·(image/max)^γ`` with γ = 1 + 0.3·severity or its inverse (random)."""
    top = float(image.max()) or 1.0
    g = 1.0 + 0.3 * severity
    g = g if rng.random() < 0.5 else 1.0 / g
    return (top * np.clip(image / top, 0.0, None) ** g).astype(np.float32)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of std 0.04·severity of the 99th percentile, background included."""
    sigma = 0.04 * severity * _scale(image)
    return (image + rng.normal(0.0, sigma, image.shape)).astype(np.float32)


def rician_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Magnitude-image noise: ``|image + n1 + i·n2|`` with n1, n2 ~ N(0, (0.04·severity·p99)²)."""
    sigma = 0.04 * severity * _scale(image)
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of sigma 0.5·severity voxels (a softer reconstruction kernel)."""
    return ndimage.gaussian_filter(image, sigma=0.5 * severity).astype(np.float32)


def thick_slices(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Slices ``severity + 1`` voxels thick along the last axis (2x2x6 mm on a 2 mm grid at severity 2),
    resampled back to the grid: slab averages at every ``severity + 1``-th slice, linear in between."""
    factor = severity + 1
    slabs = ndimage.uniform_filter1d(image, size=factor, axis=-1, mode="nearest")[..., ::factor]
    positions = np.arange(image.shape[-1]) / factor
    return ndimage.map_coordinates(
        slabs, np.meshgrid(*[np.arange(s) for s in image.shape[:-1]], positions, indexing="ij"), order=1, mode="nearest"
    ).astype(np.float32)


def global_scaling(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """All intensities times 1 + severity (another receiver gain) or its inverse (random)."""
    factor = 1.0 + severity
    return (image * (factor if rng.random() < 0.5 else 1.0 / factor)).astype(np.float32)


SHIFTS: dict[str, Shift] = {
    "bias_field": bias_field, "gaussian_noise": gaussian_noise, "blur": blur,
    "gamma": gamma, "rician_noise": rician_noise, "thick_slices": thick_slices, "global_scaling": global_scaling,
}
TUNING_SHIFTS = ("bias_field", "gaussian_noise", "blur")
HELD_OUT_SHIFTS = ("gamma", "rician_noise", "thick_slices", "global_scaling")


def apply_shift(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """``image`` under shift ``name`` at ``severity`` (1..3); same seed, same result."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; choose one of {', '.join(SHIFTS)}")
    if severity not in (1, 2, 3):
        raise ValueError(f"shift severity must be 1, 2 or 3, got {severity}")
    return SHIFTS[name](np.asarray(image, dtype=np.float32), severity, np.random.default_rng(seed))
