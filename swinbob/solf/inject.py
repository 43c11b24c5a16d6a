"""Label errors of known kind and position, injected into clean label maps to measure SOLF.

Each injector returns a new label map and an :class:`Injection` that records which organ was
corrupted (``primary``: SOLF must flag it) and every label whose voxels changed (``touched``: a
flag on one of these is no false alarm, e.g. the neighbour an organ grew into). The kinds mirror
the gross failures of automatic segmenters:

* ``swap``: a left/right pair exchanges labels (both are primary);
* ``fragment``: small islands of the organ appear far from it (spurious detections);
* ``shrink``: the organ keeps only a few voxels next to its centroid (a missed organ);
* ``grow``: the organ grows into neighbouring labelled tissue until its volume has tripled;
* ``move``: the organ is translated far (default 40 mm) from its place;
* ``island`` (:data:`EXTRA_KINDS`): a ball of a lateral organ inside its partner on the other side
  (an island of ``wm_left`` in the right hemisphere);
* ``missing_slices`` (:data:`EXTRA_KINDS`): the organ is missing from a slab of consecutive slices.

Any label set works (``labels``, default TotalVibeSegmentator); ``options`` set an injector's
parameters (e.g. ``{"grow": {"factor": 1.5}}`` for a leak into the neighbours rather than a tripling).

``MATCHING_REASONS`` lists, per kind, the SOLF reasons that count as detecting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from swinbob.labels import TOTALVIBE_LABELS, ids_by_name

KINDS = ("swap", "fragment", "shrink", "grow", "move")
EXTRA_KINDS = ("island", "missing_slices")
"""Kinds beyond :data:`KINDS` (which the phantom studies iterate), for anatomy with left/right pairs."""
MATCHING_REASONS: dict[str, frozenset[str]] = {
    "swap": frozenset({"wrong_side", "misplaced", "swapped"}),
    "fragment": frozenset({"fragments", "fragmented"}),
    "shrink": frozenset({"too_small", "outlier_log_volume", "outlier_log_surface"}),
    "grow": frozenset({"outlier_log_volume", "outlier_log_surface", "outlier_sphericity", "outlier_eccentricity"}),
    "move": frozenset({"misplaced", "wrong_side"}),
    "island": frozenset({"fragments", "fragmented", "wrong_side", "misplaced"}),
    "missing_slices": frozenset({"fragmented", "too_small", "outlier_log_volume", "outlier_log_surface",
                                 "outlier_sphericity", "outlier_eccentricity"}),
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


def eligible_organs(label: np.ndarray, min_voxels: int = 150,
                    labels: Mapping[int, str] = TOTALVIBE_LABELS) -> list[int]:
    """Single-piece organs with at least ``min_voxels`` voxels (errors in them are meaningful)."""
    counts = np.bincount(label.ravel(), minlength=256)
    return [i for i, name in labels.items()
            if i and name not in MULTI_PART and counts[i] >= min_voxels]


def swappable_pairs(label: np.ndarray, min_voxels: int = 100,
                    labels: Mapping[int, str] = TOTALVIBE_LABELS) -> list[tuple[int, int]]:
    """(left, right) ID pairs with both sides present with at least ``min_voxels`` voxels."""
    counts = np.bincount(label.ravel(), minlength=256)
    names = ids_by_name(dict(labels))
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


def shrink(label: np.ndarray, organ: int, keep: int = 3, keep_fraction: float | None = None) -> np.ndarray:
    """Keep only the ``keep`` voxels (or the ``keep_fraction`` share) of ``organ`` nearest its
    centroid; the rest become background."""
    out = label.copy()
    voxels = np.argwhere(label == organ)
    if keep_fraction is not None:
        keep = max(1, int(round(keep_fraction * len(voxels))))
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


def island(label: np.ndarray, organ: int, partner: int, rng: np.random.Generator, radius: int = 2) -> np.ndarray | None:
    """Paint a ball of ``radius`` voxels of ``organ`` over ``partner``'s voxels (its other-side twin),
    centred where ``partner`` is thickest among random candidates; None if ``partner`` is absent."""
    inside = label == partner
    if not inside.any():
        return None
    depth = ndimage.distance_transform_edt(inside)
    candidates = np.argwhere(depth >= min(float(radius), float(depth.max())))
    centre = candidates[rng.integers(len(candidates))]
    grid = np.ogrid[tuple(slice(0, s) for s in label.shape)]
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    out = label.copy()
    out[ball & inside] = organ
    return out


def missing_slices(label: np.ndarray, organ: int, rng: np.random.Generator, slices: int = 5, axis: int = 2) -> np.ndarray:
    """Remove ``organ`` from ``slices`` consecutive slices along ``axis`` (start in the middle third of its extent)."""
    present = np.flatnonzero(np.any(label == organ, axis=tuple(a for a in range(label.ndim) if a != axis)))
    low, high = int(present.min()), int(present.max())
    third = (high - low) // 3
    start = int(rng.integers(low + third, max(low + third + 1, high - third - slices + 1)))
    out = label.copy()
    slab = [slice(None)] * label.ndim
    slab[axis] = slice(start, start + slices)
    view = out[tuple(slab)]
    view[view == organ] = 0
    return out


def _inject_into(label: np.ndarray, affine: np.ndarray, kind: str, organ: int,
                 rng: np.random.Generator, options: Mapping[str, Any] | None = None) -> np.ndarray | None:
    kwargs = dict(options or {})
    if kind == "fragment":
        return fragment(label, organ, affine, rng, **kwargs)
    if kind == "shrink":
        return shrink(label, organ, **kwargs)
    if kind == "grow":
        return grow(label, organ, **kwargs)
    if kind == "move":
        return move(label, organ, affine, rng, **kwargs)
    if kind == "missing_slices":
        return missing_slices(label, organ, rng, **kwargs)
    raise ValueError(f"unknown injection kind {kind!r}; choose one of {KINDS + EXTRA_KINDS}")


def inject(case_id: str, label: np.ndarray, affine: np.ndarray, kind: str, rng: np.random.Generator,
           protected: frozenset[int] = frozenset(), labels: Mapping[int, str] = TOTALVIBE_LABELS,
           options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[np.ndarray, Injection] | None:
    """Inject one error of ``kind`` into a random suitable organ of the label set ``labels``; None if none fits.

    Organs in ``protected`` (e.g. those of earlier injections into the same scan) are neither
    chosen nor changed, so that several errors in one scan stay separately measurable.
    ``options[kind]`` are keyword arguments of that kind's injector. For ``island`` the primary
    organ is the one painted into its partner (the partner is only touched).
    """
    if kind in ("swap", "island"):
        pairs = [p for p in swappable_pairs(label, labels=labels) if not set(p) & protected]
        candidates = pairs if kind == "swap" else [q for p in pairs for q in (p, p[::-1])]
    else:
        candidates = [(o,) for o in eligible_organs(label, labels=labels) if o not in protected]
    keep = np.isin(label, list(protected))
    kwargs = dict((options or {}).get(kind, {}))
    for index in rng.permutation(len(candidates)):
        organs = tuple(int(o) for o in candidates[index])
        if kind == "swap":
            out = swap(label, *organs)
        elif kind == "island":
            out = island(label, organs[0], organs[1], rng, **kwargs)
            organs = organs[:1]
        else:
            out = _inject_into(label, affine, kind, organs[0], rng, kwargs)
        if out is not None and np.array_equal(out[keep], label[keep]):
            return out, Injection(case_id, kind, organs, _touched(label, out))
    return None
