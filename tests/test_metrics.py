"""Dice and HD95 against hand-computed values, and the summary tables."""

import math

import numpy as np
import pytest
import torch

from swinbob.labels import IGNORE_LABEL
from swinbob.metrics import dice_per_class, hd95, score_case, summarize, surface, volume_diagonal

SPACING = (0.5, 2.0, 3.0)


def voxels(shape, *points):
    mask = np.zeros(shape, bool)
    for p in points:
        mask[p] = True
    return mask


def brute_force_hd95(pred, target, spacing):
    """Reference: every pairwise distance between the two surfaces, no cropping or EDT."""
    ps = np.argwhere(surface(pred)) * np.asarray(spacing)
    ts = np.argwhere(surface(target)) * np.asarray(spacing)
    d = np.linalg.norm(ps[:, None, :] - ts[None, :, :], axis=-1)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


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


def test_percentile_is_taken_over_pooled_surface_distances():
    # P = {a}, G = {a, b} with b one voxel away along z (3 mm): distances P->G [0], G->P [0, 3];
    # pooled [0, 0, 3]; numpy's linear 95th percentile: position 1.9 -> 0 + 0.9 * 3 = 2.7 mm.
    pred = voxels((3, 3, 3), (1, 1, 0))
    target = voxels((3, 3, 3), (1, 1, 0), (1, 1, 1))
    assert hd95(pred, target, SPACING) == pytest.approx(2.7)
    assert hd95(target, pred, SPACING) == pytest.approx(2.7)  # symmetric


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
