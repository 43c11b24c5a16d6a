"""SOLF pass 1: per-organ features of one label volume, measured in a single pass.

The label volume is scanned once for voxel counts (``np.bincount``) and once for bounding boxes
(``scipy.ndimage.find_objects``); everything else (connected components, surface, moments) is
computed inside each organ's bounding box only, so a 72-organ whole-body volume costs a few full
passes instead of 72 full-volume masks (the upstream approach, see DESIGN.md §7).

Conventions, chosen so that features are comparable across scanners and orientations:

* world coordinates are NIfTI world coordinates, i.e. RAS+ (+x towards the subject's right,
  +y anterior, +z superior), obtained from the affine, so a non-RAS voxel order does not matter;
* the surface area counts voxel faces between the organ and anything else (including the volume
  border), each face weighted by its physical area from the spacing. Face counting overestimates
  the area of smooth surfaces (≈1.5× for a sphere), so the sphericity
  ``π^(1/3) (6V)^(2/3) / A`` of a digital ball is ≈0.66, not 1; it is used consistently and only
  compared within a population;
* moments treat each voxel as a uniform box (its own variance 1/12 per axis), so even a single
  voxel has a finite covariance; eccentricity is ``sqrt(1 - λ_min / λ_max)`` of the physical
  covariance (0 for a ball, → 1 for a line);
* connected components use 26-connectivity: thin oblique vessels on anisotropic grids break up
  under 6-connectivity although they are one structure.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from swinbob.labels import IGNORE_LABEL, TOTALVIBE_LABELS

MAX_LABEL = max(TOTALVIBE_LABELS)
"""Highest ID of the default label set; other sets pass their own to :func:`validate_labels`."""
MAX_ORGAN_ID = IGNORE_LABEL - 1
"""Highest value measured as an organ (any label set fits below the ignore value)."""
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
CHUNK_VOXELS = 1 << 20

SHAPE_COLUMNS = (
    "voxel_count", "volume_mm3", "surface_mm2", "sphericity", "eccentricity", "major_axis_mm",
    "minor_axis_mm", "n_components", "largest_share", "centroid_x", "centroid_y", "centroid_z",
    "bbox_min_i", "bbox_min_j", "bbox_min_k", "bbox_max_i", "bbox_max_j", "bbox_max_k", "touches_border",
    "main_surface_mm2", "main_sphericity", "main_eccentricity", "main_centroid_x", "main_centroid_y", "main_centroid_z",
)
"""Per-organ feature columns always present (bbox in voxel indices, max exclusive). ``main_*``
describe the largest connected component alone: what remains of a single-piece organ after its
fragments are cleaned, so that far-away debris does not make the organ itself look abnormal."""
MAIN_GEOMETRY = ("surface_mm2", "sphericity", "eccentricity", "centroid_x", "centroid_y", "centroid_z")


class LabelError(ValueError):
    """A label volume whose values are not IDs of the label set (the message says which)."""


def validate_labels(data: np.ndarray, max_label: int = MAX_LABEL) -> np.ndarray:
    """Return ``data`` as uint8 label IDs, or raise :class:`LabelError` saying what is wrong.

    Accepted values are 0..``max_label`` and :data:`IGNORE_LABEL` (so that cleaned outputs can be
    measured again). Float volumes are accepted only if every value is integral, because label
    maps saved as float by some tools are common, while fractional values mean the file is an
    image or a resampled (interpolated) label map.
    """
    if data.ndim != 3:
        raise LabelError(f"expected a 3D label volume, got shape {data.shape}")
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise LabelError("label volume contains NaN or Inf")
        if not np.array_equal(data, np.round(data)):
            raise LabelError("label volume has fractional values (an image or an interpolated label map?)")
    elif data.dtype.kind not in "iu":
        raise LabelError(f"label volume has unsupported data type {data.dtype}")
    low, high = data.min(), data.max()
    if low < 0:
        raise LabelError(f"label volume has negative values (minimum {low})")
    if high > max_label:
        bad = np.unique(data[(data > max_label) & (data != IGNORE_LABEL)])
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:10])
            raise LabelError(f"label values outside the map 0..{max_label} (and {IGNORE_LABEL}): {shown}")
    return data.astype(np.uint8, copy=False)


def _surface_faces(mask: np.ndarray) -> np.ndarray:
    """Number of organ/non-organ faces perpendicular to each axis (box and volume borders count)."""
    faces = np.empty(3, dtype=np.int64)
    for axis in range(3):
        first = [slice(None)] * 3
        last = [slice(None)] * 3
        first[axis], last[axis] = slice(0, 1), slice(-1, None)
        upper = [slice(None)] * 3
        lower = [slice(None)] * 3
        upper[axis], lower[axis] = slice(1, None), slice(None, -1)
        inner = np.count_nonzero(mask[tuple(upper)] != mask[tuple(lower)])
        faces[axis] = inner + np.count_nonzero(mask[tuple(first)]) + np.count_nonzero(mask[tuple(last)])
    return faces


def face_areas(spacing: np.ndarray) -> np.ndarray:
    """Physical area (mm²) of a voxel face perpendicular to each axis."""
    sx, sy, sz = (float(s) for s in spacing)
    return np.array([sy * sz, sx * sz, sx * sy])


def _index_moments(mask: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the voxel indices of ``mask`` (offset to full-volume indices).

    Computed from the three 2D projections of the mask, which is cheaper than listing the
    coordinates of every voxel of a large organ with ``np.nonzero``.
    """
    p_ij = mask.sum(axis=2, dtype=np.int64).astype(np.float64)
    p_ik = mask.sum(axis=1, dtype=np.int64).astype(np.float64)
    p_jk = mask.sum(axis=0, dtype=np.int64).astype(np.float64)
    i = np.arange(mask.shape[0], dtype=np.float64) + offset[0]
    j = np.arange(mask.shape[1], dtype=np.float64) + offset[1]
    k = np.arange(mask.shape[2], dtype=np.float64) + offset[2]
    count = p_ij.sum()
    pi, pj, pk = p_ij.sum(axis=1), p_ij.sum(axis=0), p_ik.sum(axis=0)
    mean = np.array([pi @ i, pj @ j, pk @ k]) / count
    second = np.empty((3, 3))
    second[0, 0], second[1, 1], second[2, 2] = pi @ i**2, pj @ j**2, pk @ k**2
    second[0, 1] = second[1, 0] = i @ p_ij @ j
    second[0, 2] = second[2, 0] = i @ p_ik @ k
    second[1, 2] = second[2, 1] = j @ p_jk @ k
    cov = second / count - np.outer(mean, mean) + np.eye(3) / 12.0
    return mean, cov


def _components(mask: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, tuple[slice, ...]] | None]:
    """Sizes of the 26-connected components of ``mask`` (largest first) and, if there are several,
    the largest one's mask inside its own bounding box (ties: the first in scan order)."""
    components, n = ndimage.label(mask, structure=CONNECTIVITY)
    if n == 1:
        return np.array([np.count_nonzero(mask)], dtype=np.int64), None
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    largest = int(np.argmax(sizes)) + 1
    box = ndimage.find_objects(components, max_label=largest)[largest - 1]
    return np.sort(sizes)[::-1], (components[box] == largest, box)


def _geometry(mask: np.ndarray, count: int, offset: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Surface, sphericity, eccentricity, principal axes and world centroid of ``count`` voxels."""
    linear = affine[:3, :3]
    volume = count * abs(float(np.linalg.det(linear)))
    surface = float(_surface_faces(mask) @ face_areas(np.linalg.norm(linear, axis=0)))
    mean, cov_index = _index_moments(mask, offset)
    eigen = np.clip(np.linalg.eigvalsh(linear @ cov_index @ linear.T), 0.0, None)
    centroid = linear @ mean + affine[:3, 3]
    return {
        "surface_mm2": surface,
        "sphericity": math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / surface,
        "eccentricity": math.sqrt(max(0.0, 1.0 - eigen[0] / eigen[2])),
        "major_axis_mm": 2 * math.sqrt(5 * eigen[2]),
        "minor_axis_mm": 2 * math.sqrt(5 * eigen[0]),
        "centroid_x": float(centroid[0]), "centroid_y": float(centroid[1]), "centroid_z": float(centroid[2]),
    }


def _shape_row(mask: np.ndarray, box: tuple[slice, ...], affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, float]:
    """All :data:`SHAPE_COLUMNS` of one organ given its mask inside its bounding box."""
    offset = np.array([s.start for s in box], dtype=np.float64)
    sizes, largest = _components(mask)
    count = int(sizes.sum())
    whole = _geometry(mask, count, offset, affine)
    if largest is None:
        main = whole
    else:
        main_mask, main_box = largest
        main_offset = offset + [s.start for s in main_box]
        main = _geometry(main_mask, int(sizes[0]), main_offset, affine)
    starts = [s.start for s in box]
    stops = [s.stop for s in box]
    return {
        "voxel_count": count,
        "volume_mm3": count * abs(float(np.linalg.det(affine[:3, :3]))),
        **whole,
        "n_components": int(sizes.size),
        "largest_share": float(sizes[0]) / count,
        "bbox_min_i": starts[0], "bbox_min_j": starts[1], "bbox_min_k": starts[2],
        "bbox_max_i": stops[0], "bbox_max_j": stops[1], "bbox_max_k": stops[2],
        "touches_border": int(any(a == 0 for a in starts) or any(b == n for b, n in zip(stops, shape))),
        **{f"main_{key}": main[key] for key in MAIN_GEOMETRY},
    }


def _intensity_rows(label: np.ndarray, images: np.ndarray, present: np.ndarray,
                    channel_names: list[str]) -> dict[str, np.ndarray]:
    """Mean and std of every channel in every present organ, summed run by run.

    Label maps are piecewise constant along the contiguous axis, so each slab of about a million
    voxels is cut once into runs of one label; per channel, ``np.add.reduceat`` sums each run (a
    sequential pass) and a bincount over the few runs adds them up per label. That is far fewer
    scattered additions than a weighted bincount per voxel, with the same float64 sums (only the
    order of the additions differs). Slabs keep the float64 copies small.
    """
    step = max(1, CHUNK_VOXELS // max(1, label[0].size))
    counts = np.zeros(256)
    sums = np.zeros((len(channel_names), 256))
    squares = np.zeros((len(channel_names), 256))
    for start in range(0, label.shape[0], step):
        labels = label[start:start + step].ravel()
        starts = np.flatnonzero(np.concatenate(([True], labels[1:] != labels[:-1])))
        run_labels = labels[starts]
        counts += np.bincount(run_labels, weights=np.diff(starts, append=labels.size), minlength=256)
        for index, channel in enumerate(images):
            values = channel[start:start + step].ravel().astype(np.float64)
            sums[index] += np.bincount(run_labels, weights=np.add.reduceat(values, starts), minlength=256)
            np.multiply(values, values, out=values)
            squares[index] += np.bincount(run_labels, weights=np.add.reduceat(values, starts), minlength=256)
    out: dict[str, np.ndarray] = {}
    count = counts[present]
    for index, name in enumerate(channel_names):
        mean = sums[index][present] / count
        out[f"mean_{name}"] = mean
        out[f"std_{name}"] = np.sqrt(np.clip(squares[index][present] / count - mean * mean, 0.0, None))
    return out


def measure_organs(label: np.ndarray, affine: np.ndarray, images: np.ndarray | None = None,
                   channel_names: list[str] | tuple[str, ...] = ()) -> dict[str, list]:
    """Features of every organ present in ``label`` as columns (``label`` plus the feature names).

    ``label`` must already be validated (uint8, see :func:`validate_labels`); ``images`` is an
    optional (C, X, Y, Z) array on the same grid, ``channel_names`` its C names. The ignore value
    and IDs above the map are not organs and are not measured.
    """
    label = np.ascontiguousarray(label)
    affine = np.asarray(affine, dtype=np.float64)
    boxes = ndimage.find_objects(label, max_label=MAX_ORGAN_ID)
    present = np.array([i + 1 for i, box in enumerate(boxes) if box is not None], dtype=np.int64)
    columns: dict[str, list] = {"label": present.tolist(), **{name: [] for name in SHAPE_COLUMNS}}
    for organ in present:
        box = boxes[organ - 1]
        row = _shape_row(label[box] == organ, box, affine, label.shape)
        for name in SHAPE_COLUMNS:
            columns[name].append(row[name])
    if images is not None:
        names = list(channel_names)
        if len(names) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} image channels but {len(names)} channel names")
        for name, values in _intensity_rows(label, images, present, names).items():
            columns[name] = values.tolist()
    return columns
