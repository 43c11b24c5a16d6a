"""Label errors of known kind and position, injected into clean label maps to measure SOLF.

Each injector returns a new label map and an :class:`Injection` that records which organ was
corrupted (``primary``: SOLF must flag it) and every label whose voxels changed (``touched``: a
flag on one of these is no false alarm, e.g. the neighbour an organ grew into). The kinds mirror
the gross failures of automatic segmenters:

* ``swap``: a left/right pair exchanges labels (both are primary);
* ``fragment``: small islands of the organ appear far from it (spurious detections);
* ``shrink``: the organ keeps only a few voxels next to its centroid (a missed organ);
* ``grow``: the organ grows into neighbouring labelled tissue until its volume has tripled;
* ``move``: the organ is translated far (default 40 mm) from its place.

``MATCHING_REASONS`` lists, per kind, the SOLF reasons that count as detecting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from swinbob.labels import TOTALVIBE_LABELS, ids_by_name

KINDS = ("swap", "fragment", "shrink", "grow", "move")
MATCHING_REASONS: dict[str, frozenset[str]] = {
    "swap": frozenset({"wrong_side", "misplaced"}),
    "fragment": frozenset({"fragments", "fragmented"}),
    "shrink": frozenset({"too_small", "outlier_log_volume", "outlier_log_surface"}),
    "grow": frozenset({"outlier_log_volume", "outlier_log_surface", "outlier_sphericity", "outlier_eccentricity"}),
    "move": frozenset({"misplaced", "wrong_side"}),
}
MULTI_PART = frozenset({"subcutaneous_fat", "muscle", "inner_fat", "intestine", "IVD", "vertebra_body",
                        "vertebra_posterior_elements", "costal_cartilages", "bone_other"})
"""Classes that are many pieces or tissue types rather than one organ: never injected into."""


@dataclass(frozen=True)
class Injection:
    """One injected error: its kind, the organs SOLF must flag, and every label it changed."""

    case_id: str
    kind: str
    primary: tuple[int, ...]
    touched: frozenset[int]


def _touched(before: np.ndarray, after: np.ndarray) -> frozenset[int]:
    changed = before != after
    return frozenset(int(v) for v in np.union1d(before[changed], after[changed]) if v != 0)


def eligible_organs(label: np.ndarray, min_voxels: int = 150) -> list[int]:
    """Single-piece organs with at least ``min_voxels`` voxels (errors in them are meaningful)."""
    counts = np.bincount(label.ravel(), minlength=256)
    return [i for i, name in TOTALVIBE_LABELS.items()
            if i and name not in MULTI_PART and counts[i] >= min_voxels]


def swappable_pairs(label: np.ndarray, min_voxels: int = 100) -> list[tuple[int, int]]:
    """(left, right) ID pairs with both sides present with at least ``min_voxels`` voxels."""
    counts = np.bincount(label.ravel(), minlength=256)
    names = ids_by_name(TOTALVIBE_LABELS)
    pairs = []
    for name, left in names.items():
        right = names.get(name[: -len("_left")] + "_right") if name.endswith("_left") else None
        if right is not None and counts[left] >= min_voxels and counts[right] >= min_voxels:
            pairs.append((left, right))
    return pairs


def swap(label: np.ndarray, left: int, right: int) -> np.ndarray:
    """Exchange the labels of a left/right pair."""
    out = label.copy()
    out[label == left], out[label == right] = right, left
    return out


def fragment(label: np.ndarray, organ: int, affine: np.ndarray, rng: np.random.Generator,
             islands: int = 3, size: int = 2, min_distance_mm: float = 20.0) -> np.ndarray:
    """Add ``islands`` cubes of ``size``³ voxels of ``organ`` in other labelled tissue far from it."""
    out = label.copy()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    distance = ndimage.distance_transform_edt(label != organ, sampling=spacing)
    candidates = np.argwhere((distance > min_distance_mm) & (label != 0))
    for index in rng.choice(len(candidates), size=min(islands, len(candidates)), replace=False):
        corner = np.minimum(candidates[index], np.array(label.shape) - size)
        out[tuple(slice(c, c + size) for c in corner)] = organ
    return out


def shrink(label: np.ndarray, organ: int, keep: int = 3) -> np.ndarray:
    """Keep only the ``keep`` voxels of ``organ`` nearest its centroid; the rest become background."""
    out = label.copy()
    voxels = np.argwhere(label == organ)
    order = np.argsort(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1), kind="stable")
    out[tuple(voxels[order[keep:]].T)] = 0
    return out


def grow(label: np.ndarray, organ: int, factor: float = 3.0, max_steps: int = 50) -> np.ndarray:
    """Dilate ``organ`` into neighbouring labelled tissue until its volume is ``factor`` times larger."""
    out = label.copy()
    target = factor * np.count_nonzero(label == organ)
    for _ in range(max_steps):
        mask = out == organ
        if mask.sum() >= target:
            break
        ring = ndimage.binary_dilation(mask) & ~mask & (out != 0)
        if not ring.any():
            break
        out[ring] = organ
    return out


def move(label: np.ndarray, organ: int, affine: np.ndarray, rng: np.random.Generator,
         distance_mm: float = 40.0) -> np.ndarray | None:
    """Translate ``organ`` by ``distance_mm`` in a random direction (None if it cannot stay in the grid)."""
    voxels = np.argwhere(label == organ)
    inverse = np.linalg.inv(affine[:3, :3])
    for _ in range(20):
        direction = rng.normal(size=3)
        shift = np.rint(inverse @ (distance_mm * direction / np.linalg.norm(direction))).astype(int)
        target = voxels + shift
        if np.all(target >= 0) and np.all(target < label.shape):
            out = label.copy()
            out[tuple(voxels.T)] = 0
            out[tuple(target.T)] = organ
            return out
    return None


def _inject_into(label: np.ndarray, affine: np.ndarray, kind: str, organ: int,
                 rng: np.random.Generator) -> np.ndarray | None:
    if kind == "fragment":
        return fragment(label, organ, affine, rng)
    if kind == "shrink":
        return shrink(label, organ)
    if kind == "grow":
        return grow(label, organ)
    if kind == "move":
        return move(label, organ, affine, rng)
    raise ValueError(f"unknown injection kind {kind!r}; choose one of {KINDS}")


def inject(case_id: str, label: np.ndarray, affine: np.ndarray, kind: str, rng: np.random.Generator,
           protected: frozenset[int] = frozenset()) -> tuple[np.ndarray, Injection] | None:
    """Inject one error of ``kind`` into a random suitable organ; None if none fits.

    Organs in ``protected`` (e.g. those of earlier injections into the same scan) are neither
    chosen nor changed, so that several errors in one scan stay separately measurable.
    """
    if kind == "swap":
        candidates = [p for p in swappable_pairs(label) if not set(p) & protected]
    else:
        candidates = [(o,) for o in eligible_organs(label) if o not in protected]
    keep = np.isin(label, list(protected))
    for index in rng.permutation(len(candidates)):
        organs = tuple(int(o) for o in candidates[index])
        out = swap(label, *organs) if kind == "swap" else _inject_into(label, affine, kind, organs[0], rng)
        if out is not None and np.array_equal(out[keep], label[keep]):
            return out, Injection(case_id, kind, organs, _touched(label, out))
    return None
