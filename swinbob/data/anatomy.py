"""Anatomy of the synthetic phantoms: shapes in world millimetres, the torso and brain, tissue images.

Shapes (ellipsoids, capsules) are defined in RAS+ world mm and rasterised through each case's affine
by a ``Canvas``; ``Geometry`` says how a task's scans are stored (field of view, flips, tilt). The
painters fill a canvas with TotalVibeSegmentator IDs (torso) or BraTS tissue codes (brain), and the
image functions turn a tissue map into Dixon MRI, CT in HU or the four BraTS modalities. Split from
``swinbob.data.phantoms``, which builds cases and cohorts from these.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from swinbob.labels import TOTALVIBE_LABELS, ids_by_name

# ---------------------------------------------------------------- geometry: shapes in world mm


def _rotation(angles_deg: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx from angles about the world x, y, z axes in degrees."""
    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


_MIRROR = np.diag([-1.0, 1.0, 1.0])  # reflection through the mid-sagittal plane (x -> -x)
_SHIFT_MM, _SIZE, _ANGLE_DEG = 2.0, 0.10, 8.0  # per-case jitter of organ position, size, rotation


@dataclass(frozen=True)
class _Blob:
    """Ellipsoid, or with ``power`` > 2 a flat-ended disc/cylinder along its third local axis."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray  # columns: local axes in world
    power: float = 2.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.abs(self.rotation) @ self.radii
        return self.center - half, self.center + half

    def contains(self, points: np.ndarray) -> np.ndarray:
        q = (points - self.center) @ self.rotation / self.radii
        return q[..., 0] ** 2 + q[..., 1] ** 2 + np.abs(q[..., 2]) ** self.power <= 1.0

    def mirrored(self) -> _Blob:
        return replace(self, center=_MIRROR @ self.center, rotation=_MIRROR @ self.rotation @ _MIRROR)

    def varied(self, rng: np.random.Generator, scale: float) -> _Blob:
        """Per-case copy: body scale, jittered position, size (common and per axis) and rotation."""
        size = (1 + rng.uniform(-_SIZE, _SIZE)) * (1 + rng.uniform(-_SIZE / 3, _SIZE / 3, 3))
        tilt = _rotation(rng.uniform(-_ANGLE_DEG, _ANGLE_DEG, 3))
        return replace(self, center=scale * self.center + rng.normal(0, _SHIFT_MM, 3),
                       radii=scale * self.radii * size, rotation=tilt @ self.rotation)


@dataclass(frozen=True)
class _Tube:
    """Capsule of constant radius around the segment start-end (vessels, cord, long bones)."""

    start: np.ndarray
    end: np.ndarray
    radius: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(self.start, self.end) - self.radius, np.maximum(self.start, self.end) + self.radius

    def contains(self, points: np.ndarray) -> np.ndarray:
        axis = self.end - self.start
        t = np.clip((points - self.start) @ axis / (axis @ axis), 0.0, 1.0)
        offset = points - self.start - t[..., None] * axis
        return np.einsum("...i,...i->...", offset, offset) <= self.radius**2

    def mirrored(self) -> _Tube:
        return replace(self, start=_MIRROR @ self.start, end=_MIRROR @ self.end)

    def varied(self, rng: np.random.Generator, scale: float) -> _Tube:
        return _Tube(scale * self.start + rng.normal(0, _SHIFT_MM, 3), scale * self.end + rng.normal(0, _SHIFT_MM, 3),
                     scale * self.radius * (1 + rng.uniform(-_SIZE, _SIZE)))


def _blob(center, radii, angles=(0.0, 0.0, 0.0), power: float = 2.0) -> _Blob:
    return _Blob(np.asarray(center, float), np.asarray(radii, float), _rotation(angles), power)


def _tube(start, end, radius: float) -> _Tube:
    return _Tube(np.asarray(start, float), np.asarray(end, float), float(radius))


def _pair(name: str, right: _Blob | _Tube) -> list[tuple[str, _Blob | _Tube]]:
    """Right structure (x > 0 in RAS) and its mirror image on the left; ``name`` has a ``{}``."""
    return [(name.format("right"), right), (name.format("left"), right.mirrored())]


class _Canvas:
    """World coordinates of every voxel (mm, relative to the anatomy origin) and a tissue map."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray, anatomy_origin: np.ndarray):
        self.shape, self.affine, self.origin = tuple(shape), affine, anatomy_origin
        self.inverse = np.linalg.inv(affine)
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), axis=-1)
        self.world = grid @ affine[:3, :3].T.astype(np.float32) + (affine[:3, 3] - anatomy_origin).astype(np.float32)
        self.tissue = np.zeros(self.shape, np.uint8)

    def _region(self, shape: _Blob | _Tube) -> tuple[tuple[slice, ...], np.ndarray] | None:
        """Voxel box around the shape's world bounds, and which voxels of the box are inside."""
        corners = np.array(list(itertools.product(*zip(*shape.bounds())))) + self.origin
        voxels = corners @ self.inverse[:3, :3].T + self.inverse[:3, 3]
        start = np.clip(np.floor(voxels.min(axis=0)).astype(int), 0, self.shape)
        stop = np.clip(np.ceil(voxels.max(axis=0)).astype(int) + 1, 0, self.shape)
        if np.any(stop <= start):
            return None
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        return box, shape.contains(self.world[box])

    def paint(self, shape: _Blob | _Tube, value: int) -> None:
        """Set the tissue of every voxel inside ``shape`` (later paints overwrite earlier ones)."""
        region = self._region(shape)
        if region is not None:
            self.tissue[region[0]][region[1]] = value

    def mask(self, shape: _Blob | _Tube) -> np.ndarray:
        full = np.zeros(self.shape, bool)
        region = self._region(shape)
        if region is not None:
            full[region[0]] = region[1]
        return full


@dataclass(frozen=True)
class _Geometry:
    """How a task's scans are stored: field of view, axis flips, tilt, where the anatomy lies."""

    fov_mm: tuple[float, float, float]
    flips: tuple[int, int, int]
    angles_deg: tuple[float, float, float]
    anatomy_origin: tuple[float, float, float]  # world position of the anatomy's (0, 0, 0)
    fov_center: tuple[float, float, float]  # relative to the anatomy origin

    def canvas(self, shape: tuple[int, int, int], rng: np.random.Generator) -> _Canvas:
        """Grid of ``shape`` voxels over the field of view, its centre jittered by ~2 mm per case."""
        shape_arr = np.asarray(shape)
        if shape_arr.shape != (3,) or np.any(shape_arr < 8):
            raise ValueError(f"shape must be 3 sizes >= 8, got {shape}")
        matrix = _rotation(self.angles_deg) @ np.diag(np.asarray(self.flips) * np.asarray(self.fov_mm) / shape_arr)
        center = np.add(self.anatomy_origin, self.fov_center) + rng.normal(0, 2.0, 3)
        affine = np.eye(4)
        affine[:3, :3], affine[:3, 3] = matrix, center - matrix @ ((shape_arr - 1) / 2)
        affine = affine.astype(np.float32).astype(np.float64)  # what the NIfTI sform stores, exactly
        return _Canvas(tuple(int(n) for n in shape), affine, np.asarray(self.anatomy_origin, float))


# UKBOB: Dixon stored LAS with a 3 degree yaw; BTCV: CT stored LPS; BraTS: LPS with a 4 degree pitch.
UKBOB_GEOMETRY = _Geometry((120.0, 104.0, 200.0), (-1, 1, 1), (0.0, 0.0, 3.0), (4.0, -18.0, -620.0), (0.0, 0.0, 0.0))
BTCV_GEOMETRY = _Geometry((112.0, 112.0, 120.0), (-1, -1, 1), (0.0, 0.0, 0.0), (-2.0, 150.0, -310.0), (0.0, 0.0, 50.0))
BRATS_GEOMETRY = _Geometry((64.0, 64.0, 76.8), (-1, -1, 1), (4.0, 0.0, 0.0), (0.0, -18.0, 14.0), (0.0, 0.0, 0.0))

# ------------------------------------------------------------------------ torso (UKBOB, BTCV)

# Reference torso in RAS mm, in paint order (later structures overwrite earlier ones): soft
# tissue first, then the spine (see _paint_spine), then bones and organs.
_Structure = tuple[str, _Blob | _Tube]
_TORSO_SOFT: list[_Structure] = [
    *_pair("lung_lower_lobe_{}", _blob((24, -6, 96), (16, 18, 22))),
    ("heart", _blob((-6, 17, 98), (18, 11, 12))),
    ("intestine", _blob((0, 12, 5), (28, 13, 22))),
    *_pair("iliopsoas_{}", _blob((16, -10, -8), (5.5, 5.5, 32), (0, -12, 0))),
    *_pair("autochthon_{}", _blob((12, -24, 30), (7, 5, 75))),
]
_TORSO_ORGANS: list[_Structure] = [
    *_pair("gluteus_maximus_{}", _blob((22, -22, -76), (14, 10, 20))),
    *_pair("gluteus_medius_{}", _blob((33, -10, -42), (4.5, 9, 12))),
    *_pair("hip_{}", _blob((25, -4, -52), (4.5, 16, 20), (0, 8, 0))),
    *_pair("femur_{}", _tube((27, 2, -72), (31, 2, -110), 6)),
    ("sacrum", _blob((0, -16, -60), (13, 7, 16), (-20, 0, 0))),
    ("urinary_bladder", _blob((0, 14, -72), (13, 10, 10))),
    ("kidney_right", _blob((22, -10, 26), (7, 7, 13), (0, 0, 10))),
    ("kidney_left", _blob((-22, -10, 30), (7, 7, 13), (0, 0, -10))),
    ("spleen", _blob((-28, -8, 55), (8, 11, 13), (0, 0, 20))),
    ("esophagus", _tube((-1, 3, 110), (-10, 6, 62), 3)),
    ("stomach", _blob((-15, 12, 55), (14, 10, 12), (0, 20, 0))),
    ("liver", _blob((20, 4, 56), (20, 20, 18), (0, 10, 0))),
    ("gallbladder", _blob((16, 16, 42), (5, 5, 7))),
    ("adrenal_gland_right", _blob((12, -12, 46), (3.5, 3, 4.5))),
    ("adrenal_gland_left", _blob((-16, -12, 47), (3.5, 3, 4.5))),
    ("pancreas", _blob((-5, 3, 40), (20, 4.5, 4.5), (0, 12, 0))),
    ("aorta", _tube((-10, -4, 110), (-6, -1, -15), 4)),
    ("inferior_vena_cava", _tube((8, -2, 80), (8, -2, -10), 4.5)),
    ("portal_vein_and_splenic_vein", _tube((-22, 3, 46), (10, 4, 46), 2.5)),
    ("iliac_artery_right", _tube((-5, -2, -15), (22, 2, -52), 3)),
    ("iliac_artery_left", _tube((-9, -2, -15), (-24, 2, -52), 3)),
]
# Classes that are naturally in pieces; every other structure is kept as one connected component.
_MULTI_COMPONENT = {"subcutaneous_fat", "muscle", "inner_fat", "IVD", "vertebra_body"}
_VERTEBRA_PERIOD_MM, _IVD_MM = 18.0, 5.0  # the 5 mm disc (> 2.5 mm slices) keeps vertebrae apart

# name: (fat fraction, proton density, CT HU); "_left"/"_right" are stripped before the look-up.
_MUSCLE = (0.06, 0.70, 50.0)
_TISSUES: dict[str, tuple[float, float, float]] = {
    "subcutaneous_fat": (0.92, 0.95, -105.0), "inner_fat": (0.90, 0.90, -95.0), "muscle": _MUSCLE,
    "autochthon": _MUSCLE, "iliopsoas": _MUSCLE, "gluteus_maximus": _MUSCLE, "gluteus_medius": _MUSCLE,
    "lung_lower_lobe": (0.0, 0.08, -850.0), "intestine": (0.10, 0.60, 35.0), "hip": (0.60, 0.70, 550.0),
    "femur": (0.65, 0.70, 700.0), "sacrum": (0.55, 0.70, 450.0), "vertebra_body": (0.50, 0.70, 450.0),
    "IVD": (0.0, 0.85, 90.0), "spinal_channel": (0.0, 0.95, 15.0), "spinal_cord": (0.02, 0.75, 35.0),
    "urinary_bladder": (0.0, 1.0, 10.0), "kidney": (0.02, 0.90, 75.0), "spleen": (0.02, 0.85, 55.0),
    "esophagus": (0.05, 0.60, 40.0), "stomach": (0.05, 0.55, 30.0), "liver": (0.05, 0.75, 65.0),
    "gallbladder": (0.0, 1.0, 15.0), "adrenal_gland": (0.10, 0.60, 40.0), "pancreas": (0.15, 0.70, 45.0),
    "aorta": (0.0, 0.45, 190.0), "inferior_vena_cava": (0.0, 0.50, 150.0), "heart": (0.03, 0.70, 55.0),
    "portal_vein_and_splenic_vein": (0.0, 0.50, 165.0), "iliac_artery": (0.0, 0.45, 185.0),
}
TOTALVIBE_IDS = ids_by_name(TOTALVIBE_LABELS)
BTCV_FROM_TOTALVIBE = {
    "spleen": "spleen", "kidney_right": "right_kidney", "kidney_left": "left_kidney",
    "gallbladder": "gallbladder", "esophagus": "esophagus", "liver": "liver", "stomach": "stomach",
    "aorta": "aorta", "inferior_vena_cava": "inferior_vena_cava", "pancreas": "pancreas",
    "portal_vein_and_splenic_vein": "portal_and_splenic_veins",
    "adrenal_gland_right": "right_adrenal_gland", "adrenal_gland_left": "left_adrenal_gland",
}


def paint_torso(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Body wall, spine and organs of one case into ``canvas.tissue`` (TotalVibeSegmentator IDs)."""
    scale = float(np.clip(rng.normal(1.0, 0.03), 0.94, 1.06))
    width, depth = scale * 48 * rng.uniform(0.97, 1.03), scale * 38 * rng.uniform(0.97, 1.03)
    fat_mm = rng.uniform(3.5, 6.5)  # subcutaneous fat thickness varies between people
    body, inner = _blob((0, 0, 0), (width, depth, 1e4)), _blob((0, 0, 0), (width - fat_mm, depth - fat_mm, 1e4))
    canvas.paint(body, TOTALVIBE_IDS["subcutaneous_fat"])
    canvas.paint(inner, TOTALVIBE_IDS["muscle"])
    canvas.paint(_blob((0, 0, 0), (width - fat_mm - 4, depth - fat_mm - 4, 1e4)), TOTALVIBE_IDS["inner_fat"])
    for name, shape in _TORSO_SOFT:
        canvas.paint(shape.varied(rng, scale), TOTALVIBE_IDS[name])
    _paint_spine(canvas, rng, scale)
    for name, shape in _TORSO_ORGANS:
        canvas.paint(shape.varied(rng, scale), TOTALVIBE_IDS[name])
    inside_wall = canvas.mask(inner)  # organs stop at the body wall
    canvas.tissue[~inside_wall & (canvas.tissue != 0)] = TOTALVIBE_IDS["subcutaneous_fat"]
    canvas.tissue[~canvas.mask(body)] = 0
    _merge_fragments(canvas.tissue, {i for i, name in TOTALVIBE_LABELS.items() if name not in _MULTI_COMPONENT})


def _merge_fragments(tissue: np.ndarray, single_ids: set[int]) -> None:
    """Give the slivers that crossing structures cut off an organ to their main neighbour.

    Without this, a vessel painted across the edge of an organ leaves single-voxel pieces that
    would look like segmentation errors to SOLF's connected-component rules.
    """
    for label, box in enumerate(ndimage.find_objects(tissue), start=1):
        if box is None or label not in single_ids:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        view = tissue[box]
        parts, count = ndimage.label(view == label)
        if count < 2:
            continue
        largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(parts), parts, range(1, count + 1))))
        for part in set(range(1, count + 1)) - {largest}:
            fragment = parts == part
            ring = view[ndimage.binary_dilation(fragment) & ~fragment]
            ring = ring[ring != label]
            view[fragment] = np.bincount(ring).argmax() if ring.size else 0


def _paint_spine(canvas: _Canvas, rng: np.random.Generator, scale: float) -> None:
    """Vertebral bodies separated by discs (one component per vertebra), canal and cord."""
    z0 = scale * (-44.0 + rng.uniform(-4.0, 4.0))
    half_height = scale * (_VERTEBRA_PERIOD_MM - _IVD_MM) / 2
    for k in range(9):
        disc_z = z0 + k * scale * _VERTEBRA_PERIOD_MM
        disc = _blob((0, -14 * scale, disc_z), scale * np.array([8.5, 7.0, _IVD_MM / 2]), power=8)
        canvas.paint(disc, TOTALVIBE_IDS["IVD"])
        body_center = (0, -14 * scale, disc_z + scale * _IVD_MM / 2 + half_height)
        radii = np.array([8.0 * scale, 6.5 * scale, half_height]) * [*rng.uniform(0.95, 1.05, 2), 1.0]
        canvas.paint(_blob(body_center, radii, power=8), TOTALVIBE_IDS["vertebra_body"])
    canal = _tube((0, -25, -50), (0, -25, 115), 4.2).varied(rng, scale)
    canvas.paint(canal, TOTALVIBE_IDS["spinal_channel"])
    canvas.paint(replace(canal, radius=canal.radius * 0.55), TOTALVIBE_IDS["spinal_cord"])


def _tissue_table(rng: np.random.Generator) -> np.ndarray:
    """(256, 3) fat fraction, proton density and HU per TotalVibe ID, varied a little per case."""
    table = np.zeros((256, 3))
    table[0] = (0.0, 0.0, -1000.0)
    for label, name in TOTALVIBE_LABELS.items():
        base = re.sub(r"_(left|right)$", "", name)
        if base in _TISSUES:
            fat, density, hu = _TISSUES[base]
            table[label] = (fat, density * rng.uniform(0.95, 1.05), hu + rng.normal(0.0, 4.0))
    table[TOTALVIBE_IDS["liver"], 0] = rng.uniform(0.02, 0.20)  # liver fat (PDFF) differs per subject
    return table


def dixon_image(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fat, in-phase (water + fat), opposed-phase (|water - fat|) and water magnitude images."""
    table = _tissue_table(rng)
    density = ndimage.gaussian_filter(table[:, 1][tissue].astype(np.float32), 0.6)
    fat = ndimage.gaussian_filter((table[:, 0] * table[:, 1])[tissue].astype(np.float32), 0.6)
    water = density - fat
    channels = np.stack([fat, water + fat, np.abs(water - fat), water])
    noisy = np.abs(channels + rng.normal(0.0, 0.012, channels.shape))
    return (noisy * 600.0 * rng.uniform(0.9, 1.1)).astype(np.float32)


def ct_image(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CT in HU: air -1000, fat ~-100, organs 10..80, contrast vessels 150..190, bone 450..700."""
    hu = ndimage.gaussian_filter(_tissue_table(rng)[:, 2][tissue].astype(np.float32), 0.6)
    return (hu + rng.normal(0.0, 12.0, hu.shape)).astype(np.float32)[None]


# ------------------------------------------------------------------------------- brain (BraTS)

_BRATS_WM, _BRATS_GM, _BRATS_CSF = 4, 5, 6  # tissue IDs after the label IDs NCR 1, SNFH 2, ET 3
# rows: background, NCR, SNFH, ET, WM, GM, CSF; columns: t1n, t1c, t2w, t2f
_BRATS_INTENSITY = np.array([
    [0.0, 0.0, 0.0, 0.0], [0.35, 0.25, 0.95, 0.55], [0.55, 0.55, 0.85, 0.95], [0.60, 1.30, 0.70, 0.80],
    [0.85, 0.80, 0.35, 0.45], [0.65, 0.62, 0.55, 0.60], [0.20, 0.20, 1.00, 0.15],
])


def paint_brain(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Grey and white matter, ventricles and a tumour: NCR core inside an ET rim inside edema."""
    brain = _blob((0, 0, 0), (26, 31, 27)).varied(rng, float(np.clip(rng.normal(1.0, 0.04), 0.92, 1.06)))
    canvas.paint(brain, _BRATS_GM)
    canvas.paint(replace(brain, radii=brain.radii * 0.78), _BRATS_WM)
    ventricle = _blob((4.5, 2, 6), (3, 10, 4.5), (0, 0, 8))
    for side in (ventricle, ventricle.mirrored()):
        canvas.paint(side.varied(rng, 1.0), _BRATS_CSF)
    radii, rotation = rng.uniform(10.0, 14.0, 3), _rotation(rng.uniform(-180, 180, 3))
    ncr, et = rng.uniform(0.30, 0.45), rng.uniform(0.25, 0.32)
    room = brain.radii - radii.max() * (ncr + et) - 2.0  # the whole ET rim stays inside the brain
    while True:
        offset = rng.uniform(-1, 1, 3)
        if offset @ offset <= 1 and abs(offset[0]) > 0.25:  # off the midline, in one hemisphere
            break
    center = brain.center + brain.rotation @ (offset * room)
    edema = _Blob(center, radii, rotation)
    canvas.paint(edema, 2)
    for _ in range(2):  # edema spreads irregularly around the tumour
        lobe = center + rotation @ (radii * 0.8 * rng.normal(0, 1, 3) / np.sqrt(3))
        canvas.paint(_Blob(lobe, radii * rng.uniform(0.4, 0.6), rotation), 2)
    canvas.paint(replace(edema, radii=radii * (ncr + et)), 3)
    canvas.paint(replace(edema, radii=radii * ncr), 1)
    canvas.tissue[~canvas.mask(brain)] = 0  # skull-stripped, as BraTS is distributed


def brats_image(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """t1n, t1c, t2w, t2f: ET bright on t1c, NCR dark on t1c, edema bright on t2w/t2f."""
    gains = rng.uniform(0.9, 1.1, 4)
    channels = np.stack([ndimage.gaussian_filter(c[tissue].astype(np.float32), 0.6) for c in _BRATS_INTENSITY.T])
    noisy = np.abs(channels + rng.normal(0.0, 0.02, channels.shape)) * (tissue > 0)
    return (noisy * 1000.0 * gains[:, None, None, None]).astype(np.float32)
