"""SOLF pass 1: features of hand-made label volumes against exact values and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from swinbob.solf.features import LabelError, measure_organs, validate_labels


def _affine(spacing=(1.0, 2.0, 3.0), flips=(1, 1, 1), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    affine = np.diag([*(s * f for s, f in zip(spacing, flips)), 1.0])
    affine[:3, 3] = origin
    return affine


def _brute_force(label: np.ndarray, affine: np.ndarray, organ: int) -> dict[str, float]:
    """Features of one organ from its full-volume mask and voxel list (slow, obviously right)."""
    mask = label == organ
    coords = np.argwhere(mask).astype(float)
    world = coords @ affine[:3, :3].T + affine[:3, 3]
    linear = affine[:3, :3]
    cov = np.cov(world.T, bias=True) + linear @ (np.eye(3) / 12) @ linear.T
    eigen = np.linalg.eigvalsh(cov)
    spacing = np.linalg.norm(linear, axis=0)
    padded = np.pad(mask, 1).astype(np.int8)
    faces = [np.count_nonzero(np.diff(padded, axis=a)) for a in range(3)]
    areas = [spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]]
    _, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return {"voxel_count": mask.sum(), "volume_mm3": mask.sum() * abs(np.linalg.det(linear)),
            "surface_mm2": float(np.dot(faces, areas)), "eccentricity": math.sqrt(1 - eigen[0] / eigen[2]),
            "n_components": n, "centroid_x": world[:, 0].mean(), "centroid_y": world[:, 1].mean(),
            "centroid_z": world[:, 2].mean()}


def _row(features: dict[str, list], organ: int) -> dict[str, float]:
    index = features["label"].index(organ)
    return {key: values[index] for key, values in features.items()}


def test_box_organ_has_exact_anisotropic_volume_surface_and_bbox():
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:6, 3:8, 4:10] = 5  # 4 x 5 x 6 voxels of 1 x 2 x 3 mm
    row = _row(measure_organs(label, _affine()), 5)
    assert row["voxel_count"] == 120 and row["volume_mm3"] == pytest.approx(720.0)
    # faces perpendicular to x: 2*5*6 of 2*3 mm², to y: 2*4*6 of 1*3 mm², to z: 2*4*5 of 1*2 mm²
    assert row["surface_mm2"] == pytest.approx(60 * 6 + 48 * 3 + 40 * 2)
    assert (row["bbox_min_i"], row["bbox_max_i"], row["bbox_min_k"], row["bbox_max_k"]) == (2, 6, 4, 10)
    assert row["n_components"] == 1 and row["largest_share"] == 1.0 and row["touches_border"] == 0
    assert (row["centroid_x"], row["centroid_y"], row["centroid_z"]) == pytest.approx((13.5, -10.0, 49.5))


def test_random_organs_match_brute_force_under_a_rotated_flipped_affine():
    rng = np.random.default_rng(3)
    label = np.zeros((30, 26, 22), np.uint8)
    for organ in (1, 7, 42, 72):
        centre = rng.integers(5, 18, 3)
        radii = rng.uniform(2, 5, 3)
        grid = np.ogrid[tuple(slice(0, n) for n in label.shape)]
        label[sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1] = organ
    label[0, 0, 0] = 7  # a second component of organ 7, on the border
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.5, 2.0, 2.5])
    affine[:3, 3] = (5, 6, 7)
    features = measure_organs(label, affine)
    assert features["label"] == [o for o in (1, 7, 42, 72) if np.any(label == o)]
    for organ in features["label"]:
        expected, row = _brute_force(label, affine, organ), _row(features, organ)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (organ, key)
    assert _row(features, 7)["touches_border"] == 1 and _row(features, 7)["n_components"] == 2


def test_world_features_do_not_depend_on_storage_orientation():
    label = np.zeros((16, 12, 10), np.uint8)
    label[3:9, 2:5, 1:7] = 3
    label[10:14, 6:11, 4:9] = 2
    affine = _affine(spacing=(2.0, 1.5, 3.0))
    flipped_affine = affine @ np.array([[-1, 0, 0, 15], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    original = measure_organs(label, affine)
    flipped = measure_organs(label[::-1].copy(), flipped_affine)
    for key in ("volume_mm3", "surface_mm2", "sphericity", "eccentricity", "centroid_x", "centroid_y", "centroid_z"):
        assert flipped[key] == pytest.approx(original[key]), key


def test_components_use_26_connectivity_and_report_the_largest_share():
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:5, 2:5, 2:5] = 4
    label[5, 5, 5] = 4  # touches the cube only at a corner: same component
    label[8, 8, 8] = 4  # separate
    row = _row(measure_organs(label, np.eye(4)), 4)
    assert row["n_components"] == 2 and row["largest_share"] == pytest.approx(28 / 29)


def test_intensity_mean_and_std_per_channel_and_organ():
    rng = np.random.default_rng(0)
    label = np.zeros((12, 8, 6), np.uint8)
    label[:6] = 1
    label[6:10] = 2
    images = rng.normal(100, 5, (2, *label.shape)).astype(np.float32)
    features = measure_organs(label, np.eye(4), images, ("fat", "water"))
    for organ in (1, 2):
        row = _row(features, organ)
        values = images[1][label == organ].astype(np.float64)
        assert row["mean_water"] == pytest.approx(values.mean()) and row["std_water"] == pytest.approx(values.std())


def test_ignore_value_is_not_an_organ():
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:3, 1:3, 1:3] = 255
    label[4, 4, 4] = 9
    assert measure_organs(label, np.eye(4))["label"] == [9]


@pytest.mark.parametrize("data, message", [
    (np.full((3, 3, 3), 1.5, np.float32), "fractional"),
    (np.full((3, 3, 3), -1, np.int16), "negative"),
    (np.full((3, 3, 3), 73, np.int16), "outside the map"),
    (np.full((3, 3, 3), 254, np.uint8), "outside the map"),
    (np.full((3, 3, 3), np.nan, np.float32), "NaN"),
    (np.zeros((3, 3, 3, 2), np.uint8), "3D"),
])
def test_invalid_label_values_are_refused_with_a_reason(data, message):
    with pytest.raises(LabelError, match=message):
        validate_labels(data)


def test_integral_float_labels_and_the_ignore_value_are_accepted():
    data = np.array([0.0, 5.0, 72.0, 255.0], np.float64).reshape(1, 2, 2)
    out = validate_labels(data)
    assert out.dtype == np.uint8 and out.ravel().tolist() == [0, 5, 72, 255]


def test_all_features_equal_the_naive_per_organ_loop_of_the_benchmark(monkeypatch):
    """The benchmark's reference (full-volume mask per label) on a small volume with short runs of
    labels, many components and several intensity slabs (the run-by-run sums cross slab borders)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_solf import CHANNELS, assert_same, naive_features

    import swinbob.solf.features as features

    rng = np.random.default_rng(3)
    label = np.repeat(rng.integers(0, 73, (10, 8, 6)), 2, axis=2).astype(np.uint8)  # runs of 2 along the last axis
    label[rng.random(label.shape) < 0.1] = 0
    images = rng.normal(300, 40, (4, *label.shape)).astype(np.float32)
    affine = _affine(flips=(-1, 1, 1))
    monkeypatch.setattr(features, "CHUNK_VOXELS", 50)  # one row of 8x12 voxels per slab
    assert_same(measure_organs(label, affine, images, CHANNELS), naive_features(label, affine, images))


# From mutation testing: exact messages, dtypes and edge volumes the tests above
# did not pin down. Survivors that cannot change a result are in tests/mutation_equivalents.md.

@pytest.mark.parametrize("data, message", [
    (np.full((3, 3, 3), np.inf, np.float32), "label volume contains NaN or Inf"),
    (np.full((3, 3, 3), 0.5, np.float64), "label volume has fractional values (an image or an interpolated label map?)"),
    (np.zeros((3, 3, 3), np.complex64), "label volume has unsupported data type complex64"),
    (np.arange(73, 84, dtype=np.int16).reshape(1, 1, 11),
     "label values outside the map 0..72 (and 255): 73, 74, 75, 76, 77, 78, 79, 80, 81, 82"),
])
def test_invalid_labels_have_the_exact_one_line_message(data, message):
    with pytest.raises(LabelError) as error:
        validate_labels(data)
    assert str(error.value) == message  # at most ten bad values are listed


def test_boolean_masks_are_accepted_and_uint8_input_is_not_copied():
    mask = np.zeros((2, 2, 2), bool)
    mask[0, 0, 0] = True
    out = validate_labels(mask)
    assert out.dtype == np.uint8 and out.sum() == 1 and out[0, 0, 0] == 1
    labels = np.zeros((4, 4, 4), np.uint8)
    assert np.shares_memory(validate_labels(labels), labels)  # a whole-body volume is not duplicated


def test_channel_count_mismatch_names_both_counts():
    label = np.ones((5, 3, 3), np.uint8)
    with pytest.raises(ValueError, match=r"^2 image channels but 3 channel names$"):
        measure_organs(label, np.eye(4), np.zeros((2, *label.shape), np.float32), ("a", "b", "c"))


def test_empty_volume_and_single_slice_volume_with_images():
    empty = measure_organs(np.zeros((4, 4, 4), np.uint8), np.eye(4), np.zeros((1, 4, 4, 4)), ("t1",))
    assert empty["label"] == [] and empty["mean_t1"] == [] and empty["voxel_count"] == []
    label = np.zeros((1, 4, 4), np.uint8)
    label[0, :2] = 3
    images = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    row = _row(measure_organs(label, np.eye(4), images, ("t1",)), 3)
    assert row["mean_t1"] == pytest.approx(3.5) and row["std_t1"] == pytest.approx(np.arange(8).std())


@pytest.mark.parametrize("value", [0.7, 1.1, 3.3])
def test_constant_intensity_has_zero_std_not_nan_or_a_floor(value):
    label = np.zeros((10, 6, 6), np.uint8)
    label[:, :3] = 1
    label[:, 3:] = 2
    features = measure_organs(label, np.eye(4), np.full((1, *label.shape), value, np.float32), ("t1",))
    assert features["std_t1"] == [0.0, 0.0]


def test_oblique_organ_covariance_uses_every_cross_term():
    label = np.zeros((12, 12, 12), np.uint8)
    for t in range(10):
        label[1 + t, 2 + t // 3, 1 + t] = 6  # a rod along the i-k diagonal, slightly tilted in j
        label[1 + t, 10 - t, 5] = 8  # a rod along the i-j anti-diagonal
    angle = np.radians(30)  # about the y axis: the world covariance mixes the i-k cross term both ways
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.0, 1.5, 2.0])
    features = measure_organs(label, affine)
    for organ in (6, 8):
        expected, row = _brute_force(label, affine, organ), _row(features, organ)
        assert row["eccentricity"] == pytest.approx(expected["eccentricity"], rel=1e-9), organ
