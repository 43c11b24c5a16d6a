"""Dice and HD95 against hand-computed values, an independent brute force and MONAI's own metric
functions (the definitions the project follows), and the summary tables."""

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from swinbob.labels import IGNORE_LABEL
from swinbob.infer.metrics import (
    dice_per_class,
    hd95,
    MetricsLog,
    json_ready,
    metrics_csv,
    score_case,
    summarize,
    surface,
    volume_diagonal,
)

SPACING = (0.5, 2.0, 3.0)


def voxels(shape, *points):
    mask = np.zeros(shape, bool)
    for p in points:
        mask[p] = True
    return mask


def face_surface(mask):
    """Independent of ``metrics.surface``: mask voxels with one of their 6 face neighbours outside
    the mask, the array border counting as outside (shifts of a zero-padded copy, no erosion)."""
    padded = np.pad(mask, 1)
    inner = (slice(1, -1),) * 3
    outside_neighbour = np.zeros_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            outside_neighbour |= ~np.roll(padded, step, axis=axis)[inner]
    return mask & outside_neighbour


def brute_force_hd95(pred, target, spacing):
    """Reference: every pairwise distance between the two surfaces, no cropping or EDT; the larger
    of the two directed 95th percentiles (MONAI's definition)."""
    ps = np.argwhere(face_surface(pred)) * np.asarray(spacing)
    ts = np.argwhere(face_surface(target)) * np.asarray(spacing)
    d = np.linalg.norm(ps[:, None, :] - ts[None, :, :], axis=-1)
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


def blob(rng, shape, threshold):
    """A random smooth organ-like mask (smoothed noise, thresholded)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 2.5))
    return field > threshold * field.std()


def monai_hd95(pred, target, spacing):
    as_batch = lambda m: torch.from_numpy(m)[None, None].float()  # noqa: E731
    return float(compute_hausdorff_distance(as_batch(pred), as_batch(target), include_background=True,
                                            percentile=95, spacing=list(spacing))[0, 0])


def test_dice_hand_values_and_empty_classes():
    pred = torch.tensor([[0, 1, 1, 2, 0, 0]])
    target = torch.tensor([[0, 1, 2, 2, 0, 0]])
    dice = dice_per_class(pred, target, [1, 2, 3])
    assert dice[0].item() == pytest.approx(2 * 1 / (2 + 1))
    assert dice[1].item() == pytest.approx(2 * 1 / (1 + 2))
    assert math.isnan(dice[2].item())  # absent from both: not scored


def test_identical_masks_have_hd95_zero():
    mask = np.zeros((6, 7, 5), bool)
    mask[1:4, 2:6, 1:3] = True
    assert hd95(mask, mask, SPACING) == 0.0


def test_single_voxels_use_the_anisotropic_spacing():
    # offset of (1, 2, 0) voxels at spacing (0.5, 2, 3) mm -> sqrt(0.5^2 + 4^2) mm
    pred = voxels((4, 4, 4), (0, 0, 1))
    target = voxels((4, 4, 4), (1, 2, 1))
    assert hd95(pred, target, SPACING) == pytest.approx(math.sqrt(0.25 + 16.0))


def test_percentile_is_the_larger_of_the_two_directed_ones():
    # P = {a}, G = {a, b} with b one voxel away along z (3 mm): distances P->G [0], G->P [0, 3];
    # 95th percentiles (linear): 0 and 0 + 0.95 * 3 = 2.85 mm; HD95 is the larger (MONAI), where
    # pooling both directions (medpy) would give 2.7 mm.
    pred = voxels((3, 3, 3), (1, 1, 0))
    target = voxels((3, 3, 3), (1, 1, 0), (1, 1, 1))
    assert hd95(pred, target, SPACING) == pytest.approx(2.85)
    assert hd95(target, pred, SPACING) == pytest.approx(2.85)  # symmetric


def test_a_single_outlier_voxel_does_not_move_hd95():
    target = np.zeros((20, 20, 20), bool)
    target[3:12, 3:12, 3:12] = True
    pred = target.copy()
    pred[18, 18, 18] = True  # far-away false positive: Hausdorff would jump, HD95 does not
    assert hd95(pred, target, (1.0, 1.0, 1.0)) == 0.0


def test_empty_masks_follow_the_documented_conventions():
    shape, spacing = (4, 5, 6), (1.0, 2.0, 3.0)
    empty = np.zeros(shape, bool)
    some = voxels(shape, (1, 1, 1))
    assert math.isnan(hd95(empty, empty, spacing))
    diagonal = math.sqrt(4**2 + 10**2 + 18**2)
    assert volume_diagonal(shape, spacing) == pytest.approx(diagonal)
    assert hd95(empty, some, spacing) == pytest.approx(diagonal)  # missed organ
    assert hd95(some, empty, spacing) == pytest.approx(diagonal)  # hallucinated organ


def test_hd95_matches_brute_force_on_random_masks_touching_the_border():
    rng = np.random.default_rng(3)
    for _ in range(5):
        pred = rng.random((9, 8, 7)) > 0.6
        target = rng.random((9, 8, 7)) > 0.5
        pred[0, :, :] = True  # touches the array border: those voxels are surface voxels
        assert hd95(pred, target, SPACING) == pytest.approx(brute_force_hd95(pred, target, SPACING))


def test_score_case_ignores_ignore_voxels_and_scores_regions():
    target = np.zeros((5, 5, 5), np.int16)
    target[1:3, 1:3, 1:3] = 1
    target[3, 3, 3] = 3
    target[4, 4, 4] = IGNORE_LABEL
    pred = target.copy()
    pred[4, 4, 4] = 2  # predicted inside an ignored voxel: does not count
    rows = score_case(pred, target, {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}, (1.0, 1.0, 1.0))
    assert [r["class"] for r in rows] == ["TC", "WT", "ET"]
    assert all(r["dice"] == 1.0 and r["hd95_mm"] == 0.0 for r in rows)


def test_summary_means_skip_nan_and_overall_averages_cases():
    rows = [
        {"case": "a", "class": "liver", "dice": 0.8, "hd95_mm": 2.0},
        {"case": "a", "class": "spleen", "dice": float("nan"), "hd95_mm": float("nan")},
        {"case": "b", "class": "liver", "dice": 0.6, "hd95_mm": 4.0},
        {"case": "b", "class": "spleen", "dice": 1.0, "hd95_mm": 0.0},
    ]
    summary = summarize(rows)
    assert summary["dice"]["per_class"]["liver"] == pytest.approx({"mean": 0.7, "std": 0.1, "n": 2})
    assert summary["dice"]["per_class"]["spleen"] == {"mean": 1.0, "std": 0.0, "n": 1}
    # case means: a = 0.8 (spleen not scored), b = 0.8 -> 0.8 +- 0
    assert summary["dice"]["overall"] == pytest.approx({"mean": 0.8, "std": 0.0, "n": 2})
    assert summary["hd95_mm"]["overall"] == pytest.approx({"mean": 2.0, "std": 0.0, "n": 2})


def test_surface_is_the_face_connected_boundary():
    # A 3x3x3 cube: every voxel but the centre has a face neighbour outside (26 surface voxels).
    # A plus sign (centre and its 6 face neighbours): the centre's face neighbours are all inside,
    # so it is not surface (with 26-connectivity its diagonal neighbours would make it one).
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface(cube).sum() == 26 and not surface(cube)[2, 2, 2]
    plus = np.zeros((5, 5, 5), bool)
    plus[2, 2, 2] = True
    for axis in range(3):
        for step in (-1, 1):
            index = [2, 2, 2]
            index[axis] += step
            plus[tuple(index)] = True
    assert surface(plus).sum() == 6 and not surface(plus)[2, 2, 2]
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = blob(rng, (12, 10, 9), 0.2)
        assert np.array_equal(surface(mask), face_surface(mask))


@pytest.mark.parametrize("case", range(20))
def test_hd95_equals_monai_on_random_anisotropic_masks(case):
    """Acceptance: within 1e-4 mm of ``monai.metrics.compute_hausdorff_distance(percentile=95)``."""
    rng = np.random.default_rng(100 + case)
    shape = tuple(int(v) for v in rng.integers(10, 22, size=3))
    spacing = tuple(float(v) for v in rng.uniform(0.4, 4.0, size=3))
    pred, target = blob(rng, shape, 0.3), blob(rng, shape, 0.5)
    if case % 4 == 0:
        pred[0] = True  # masks touching the array border
    if case % 5 == 1:
        pred = ndimage.binary_dilation(target, iterations=1) & (rng.random(shape) > 0.1)  # a near miss
    assert pred.any() and target.any()
    expected = monai_hd95(pred, target, spacing)
    assert hd95(pred, target, spacing) == pytest.approx(expected, abs=1e-4)
    assert hd95(target, pred, spacing) == pytest.approx(monai_hd95(target, pred, spacing), abs=1e-4)


def test_dice_equals_monai_on_random_label_volumes():
    rng = np.random.default_rng(7)
    pred = torch.from_numpy(rng.integers(0, 4, size=(11, 9, 8)))
    target = torch.from_numpy(rng.integers(0, 4, size=(11, 9, 8)))
    target[0, 0, 0] = 3
    pred[pred == 2] = 1  # class 2 absent from the prediction: Dice 0 in both
    ours = dice_per_class(pred, target, [1, 2, 3])
    onehot = lambda x: torch.stack([x == c for c in range(4)])[None].float()  # noqa: E731
    theirs = compute_dice(onehot(pred), onehot(target), include_background=False)[0]
    assert torch.allclose(ours.double(), theirs.double(), atol=1e-6)


def test_dice_ignores_ignored_voxels_and_a_single_voxel_on_one_side_scores_zero():
    pred = torch.tensor([[1, 1, 0, 2]])
    target = torch.tensor([[1, IGNORE_LABEL, 0, 0]])  # the second 1 is predicted on an ignored voxel
    dice = dice_per_class(pred, target, [1, 2])
    assert dice[0].item() == 1.0
    assert dice[1].item() == 0.0  # one voxel, in the prediction only: 0, not "not scored"


def test_hd95_accepts_integer_masks_and_a_valid_region():
    target = np.zeros((12, 12, 12), np.uint8)  # 0/1 integers, as read from a NIfTI file
    target[3:8, 3:8, 3:8] = 1
    pred = np.roll(target, 2, axis=0)
    spacing = (1.0, 2.0, 0.5)
    as_bool = hd95(pred.astype(bool), target.astype(bool), spacing)
    assert as_bool == pytest.approx(2.0) and hd95(pred, target, spacing) == as_bool
    valid = np.ones_like(target, bool)
    valid[:, :, 8:] = False  # nothing of either mask lies there: same value
    assert hd95(pred, target, spacing, valid=valid) == as_bool
    valid[8:] = False  # the shifted part of the prediction is left out: only x 3..7 remains of it
    assert hd95(pred, target, spacing, valid=valid) == pytest.approx(hd95(pred[:8], target[:8], spacing))


@pytest.mark.parametrize("call", [
    lambda: dice_per_class(torch.zeros(2, 3), torch.zeros(3, 2), [1]),
    lambda: hd95(np.zeros((2, 3, 4), bool), np.zeros((2, 3, 5), bool), SPACING),
    lambda: score_case(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), {"a": (1,)}, SPACING),
])
def test_shape_mismatches_name_both_shapes(call):
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)|\(2, 3\).*\(3, 2\)"):
        call()


def test_regions_of_several_labels_are_scored_as_their_union():
    target = np.zeros((6, 6, 6), np.int16)
    target[1:3, 1:3, 1:3] = 1
    target[3:5, 1:3, 1:3] = 3
    pred = np.where(target == 3, 1, target)  # ET predicted as necrosis: still inside TC = {1, 3}
    rows = {r["class"]: r for r in score_case(pred, target, {"TC": (1, 3), "ET": (3,)}, (1.0, 1.0, 1.0))}
    assert rows["TC"]["dice"] == 1.0 and rows["TC"]["hd95_mm"] == 0.0
    assert rows["ET"]["dice"] == 0.0


def test_summary_of_a_never_scored_class_and_the_report_formats():
    rows = [{"case": "a", "method": "etta", "class": "liver", "dice": 0.123456789, "hd95_mm": float("nan")}]
    summary = summarize(rows)
    assert summary["hd95_mm"]["per_class"]["liver"] == {"mean": None, "std": None, "n": 0}
    assert summary["hd95_mm"]["overall"] == {"mean": None, "std": None, "n": 0}
    assert metrics_csv(rows) == "case,method,class,dice,hd95_mm\na,etta,liver,0.123457,nan\n"
    assert json_ready({1: [0.5, float("inf")], "b": (float("nan"), 2)}) == {"1": [0.5, None], "b": [None, 2]}


def test_metrics_log_creates_its_folders_writes_the_header_once_and_closes_twice_safely(tmp_path):
    path = tmp_path / "runs" / "eval" / "metrics.csv"  # neither folder exists yet
    rows = [{"case": f"c{i}", "method": "etta", "class": "liver", "dice": 0.5 + i / 10, "hd95_mm": float(i)} for i in range(3)]
    log = MetricsLog(path)
    log.append([])
    assert not path.exists()  # nothing finished: no file
    log.append(rows[:1])
    log.append(rows[1:])
    log.close()
    log.close()
    assert path.read_text(encoding="utf-8") == metrics_csv(rows)
