"""Values a user relies on, each checked against an oracle that is not the code under test.

Hand-computed numbers, the field's own libraries (nibabel's orientation codes, scipy's labelling)
and images whose answer is known by construction (a bright block on the subject's right). The data
is deliberately irregular (permuted and oblique affines, three different voxel sizes, organs that
touch at a corner) because regular data hides axis mix-ups and connectivity mistakes.
"""

from __future__ import annotations

import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from swinbob.files import NiftiError
from swinbob.data.dataset_task import DatasetJsonError, ct_intensity, median_spacing, parse_labels, task_from_dataset
from swinbob.data.shifts import apply_shift
from swinbob.data.transforms import NormalizeForegroundd
from swinbob.infer.outputs import ordered_regions_to_labels
from swinbob.infer.statistics import structure_statistics
from swinbob.viz import LEGEND_WIDTH, GifSettings, ras_spacing, to_ras, write_gif
from tiny import (ANISOTROPIC_AFFINE, OBLIQUE_AFFINE, OBLIQUE_RAS_SPACING, PERMUTED_AFFINE, PERMUTED_RAS_SPACING,
                  corner_touching_labels)

_RAS_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


def _ras_spacing_by_nibabel(affine: np.ndarray) -> list[float]:
    """Voxel size along R, A, S from nibabel's axis codes and the header's zooms (not io_orientation)."""
    zooms = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), affine).header.get_zooms()
    spacing = [0.0, 0.0, 0.0]
    for code, zoom in zip(nib.aff2axcodes(affine), zooms):
        spacing[_RAS_AXIS[code]] = float(zoom)
    return spacing


def test_irregular_geometries_have_the_ras_spacing_nibabel_reads():
    assert _ras_spacing_by_nibabel(PERMUTED_AFFINE) == pytest.approx(PERMUTED_RAS_SPACING)
    assert _ras_spacing_by_nibabel(OBLIQUE_AFFINE) == pytest.approx(OBLIQUE_RAS_SPACING)
    assert nib.aff2axcodes(PERMUTED_AFFINE) == ("P", "S", "L") and nib.aff2axcodes(OBLIQUE_AFFINE) == ("A", "R", "S")


def test_median_spacing_of_sagittal_oblique_and_axial_images_is_taken_along_ras(tmp_path):
    entries = []
    for name, affine in (("sagittal", PERMUTED_AFFINE), ("oblique", OBLIQUE_AFFINE), ("axial", ANISOTROPIC_AFFINE)):
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), affine), tmp_path / f"{name}.nii.gz")
        entries.append({"image": str(tmp_path / f"{name}.nii.gz"), "label": "unused"})
    # RAS spacings (4.0, 0.9, 1.2), (0.7, 2.0, 3.0), (1.0, 1.5, 2.5): medians by hand 1.0, 1.5, 2.5
    # (array order would give (1.0, 1.2, 3.0))
    assert median_spacing(entries) == pytest.approx((1.0, 1.5, 2.5), abs=1e-4)
    by_nibabel = np.median([_ras_spacing_by_nibabel(a) for a in (PERMUTED_AFFINE, OBLIQUE_AFFINE, ANISOTROPIC_AFFINE)], 0)
    assert median_spacing(entries) == pytest.approx(tuple(by_nibabel), abs=1e-4)
    assert median_spacing(entries[:1] * 2 + [{"image": [str(tmp_path / "axial.nii.gz")]}]) == pytest.approx(PERMUTED_RAS_SPACING)


BRATS_REGIONS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}


def test_a_region_dataset_json_without_regions_class_order_is_refused_naming_file_and_field(tmp_path):
    path = tmp_path / "brats.json"
    path.write_text(json.dumps({"labels": BRATS_REGIONS, "channel_names": {"0": "T1"}}))
    with pytest.raises(DatasetJsonError, match=r"brats\.json: .*'regions_class_order'") as refused:
        task_from_dataset(path, spacing=(1, 1, 1))
    assert "\n" not in str(refused.value)
    assert parse_labels({"labels": BRATS_REGIONS}, "brats.json")["label_map"][3] == "enhancing_tumor"  # names alone: fine
    with pytest.raises(DatasetJsonError, match="one label per region"):
        parse_labels({"labels": BRATS_REGIONS, "regions_class_order": [1, 2]}, "brats.json")
    path.write_text(json.dumps({"labels": BRATS_REGIONS, "channel_names": {"0": "T1"}, "regions_class_order": [1, 2, 3]}))
    assert task_from_dataset(path, spacing=(1, 1, 1)).region_labels == (1, 2, 3)
    assert parse_labels({"labels": {"background": 0, "liver": 1}}, "x.json")["region_labels"] == ()  # not a region task


def test_the_given_regions_class_order_restores_brats_labels_from_their_nested_regions():
    truth = torch.tensor([0, 1, 2, 3, 1, 3])  # background, edema, necrosis, enhancing (BraTS 2021 ids 1, 2, 3)
    order = parse_labels({"labels": BRATS_REGIONS, "regions_class_order": [1, 2, 3]}, "brats.json")["region_labels"]
    regions = torch.stack([torch.isin(truth, torch.tensor(ids)) for ids in ([1, 2, 3], [2, 3], [3])])
    assert ordered_regions_to_labels(regions, order).tolist() == truth.tolist()


def _write_ct_case(folder, name: str, image: np.ndarray, label: np.ndarray) -> dict[str, str]:
    for kind, array in (("img", image), ("lbl", label)):
        nib.save(nib.Nifti1Image(array, PERMUTED_AFFINE), folder / f"{name}_{kind}.nii.gz")
    return {"image": str(folder / f"{name}_img.nii.gz"), "label": str(folder / f"{name}_lbl.nii.gz")}


def test_ct_window_clips_to_the_foregrounds_half_and_ninety_nine_and_a_half_percentiles(tmp_path):
    # 1001 foreground voxels of 100, 101, ..., 1100 HU (each once) and a bright background that must not count
    image = np.full((13, 11, 7), 3000.0, np.float32)
    label = np.zeros(image.shape, np.uint8)
    flat_image, flat_label = image.reshape(-1), label.reshape(-1)
    flat_image[:1001], flat_label[:1001] = 100 + np.arange(1001), np.arange(1001) % 3 + 1
    window = ct_intensity([_write_ct_case(tmp_path, "a", image, label)])
    # nnU-Net: 0.5th / 99.5th percentiles of 100..1100 are 105 and 1095 by hand (5th / 95th: 150 and 1050)
    assert window.a_min == pytest.approx(105.0, abs=0.5) and window.a_max == pytest.approx(1095.0, abs=0.5)
    clipped = np.concatenate([np.full(6, 105.0), np.arange(106.0, 1095.0), np.full(6, 1095.0)])
    mean, std = 600.0, float(np.sqrt(np.mean((clipped - 600.0) ** 2)))  # symmetric about 600
    assert window.b_min == pytest.approx((105 - mean) / std, rel=1e-6)
    assert window.b_max == pytest.approx((1095 - mean) / std, rel=1e-6)


def test_ct_window_reads_the_first_channel_and_samples_reproducibly(tmp_path):
    """A multi-channel entry takes its CT from the first file; a foreground larger than the per-case
    sample (VOXELS_PER_CASE) gives the same window on every call and for the default seed 0."""
    rng = np.random.default_rng(3)
    image = rng.normal(300.0, 80.0, size=(30, 30, 20)).astype(np.float32)  # 18 000 voxels > 10 000 sampled
    label = np.ones(image.shape, np.uint8)
    single = _write_ct_case(tmp_path, "ct", image, label)
    decoy = _write_ct_case(tmp_path, "decoy", image + 5000.0, label)
    listed = ct_intensity([{"image": [single["image"], decoy["image"]], "label": single["label"]}])
    assert listed == ct_intensity([single]) and listed.a_max < 1000  # the decoy (+5000 HU) is never read
    assert ct_intensity([single]) == ct_intensity([single]) == ct_intensity([single], seed=0)
    assert ct_intensity([single], seed=1) != ct_intensity([single], seed=0)  # the seed picks the sample


def test_ct_window_of_a_four_dimensional_image_uses_its_first_channel_and_keeps_a_small_std(tmp_path):
    # 1001 foreground values 0.000, 0.001, ..., 1.000 (std ≈ 0.29, below 1: not floored); channel 1 a decoy
    values = np.arange(1001) / 1000.0
    image = np.zeros((13, 11, 7, 2), np.float32)
    label = np.zeros(image.shape[:3], np.uint8)
    image.reshape(-1, 2)[:1001, 0], image.reshape(-1, 2)[:1001, 1] = values, values + 50.0
    label.reshape(-1)[:1001] = 1
    window = ct_intensity([_write_ct_case(tmp_path, "four", image, label)])
    low, high = np.percentile(values, [0.5, 99.5])  # 0.005 and 0.995, the definition on the known values
    clipped = np.clip(values, low, high)
    assert (window.a_min, window.a_max) == pytest.approx((0.005, 0.995), abs=1e-6) == (low, high)
    assert window.b_max == pytest.approx((high - clipped.mean()) / clipped.std(), rel=1e-5)  # about 1.70


def test_ct_window_refuses_a_foreground_that_is_empty_or_constant(tmp_path):
    image = np.full((6, 5, 4), 40.0, np.float32)
    label = np.zeros(image.shape, np.uint8)
    with pytest.raises(DatasetJsonError, match="^CT intensity statistics: no foreground voxel in the training labels$"):
        ct_intensity([_write_ct_case(tmp_path, "empty", image, label)])
    label[1:3, 1:3, 1:3] = 1
    with pytest.raises(DatasetJsonError, match=r"the training foreground is constant \(40\); give the window with --a_min/--a_max"):
        ct_intensity([_write_ct_case(tmp_path, "flat", image, label)])
    with pytest.raises(NiftiError, match="two_lbl"):  # a label map of two volumes is refused, naming the file
        ct_intensity([_write_ct_case(tmp_path, "two", image, np.stack([label, label], axis=-1))])


def test_statistics_count_organs_touching_at_a_corner_or_an_edge_as_one_component():
    labels = corner_touching_labels()
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    stats = structure_statistics(labels, image, PERMUTED_AFFINE, {"corner": (1,), "edge": (2,), "apart": (3,)})
    assert [stats[n]["components"] for n in ("corner", "edge", "apart")] == [1, 1, 2]  # by hand
    full = np.ones((3, 3, 3), bool)  # scipy with the 26-neighbourhood, the documented connectivity
    assert [stats[n]["components"] for n in ("corner", "edge", "apart")] == [
        ndimage.label(labels == k, structure=full)[1] for k in (1, 2, 3)]
    # 16 voxels of 0.9 x 1.2 x 4.0 mm = 69.12 mm^3; mean of the indices of the two corner cubes by hand
    assert stats["corner"]["voxels"] == 16 and stats["corner"]["volume_ml"] == pytest.approx(0.06912)
    corner = [x * 144 + y * 12 + z for lo in (1, 3) for x in (lo, lo + 1) for y in (lo, lo + 1) for z in (lo, lo + 1)]
    assert stats["corner"]["mean_intensity"] == pytest.approx(sum(corner) / 16)
    assert stats["corner"]["bbox"] == [[1, 4], [1, 4], [1, 4]] and stats["edge"]["bbox"] == [[7, 10], [1, 4], [1, 2]]


def test_foreground_zscore_clips_to_the_foreground_percentiles_then_standardises_exactly():
    # background: 3000 zeros; foreground (above Otsu's cut) 1000.0, 1000.1, ..., 1100.0 once each
    values = torch.cat([torch.zeros(3000), 1000 + torch.arange(1001.0) / 10]).reshape(1, 4001, 1, 1)
    out = NormalizeForegroundd(keys="image")({"image": values})["image"].flatten().double()
    # 0.5/99.5 percentiles of the foreground: 1000.5 and 1099.5; clipped foreground mean 1050 (symmetric)
    clipped = np.concatenate([np.full(6, 1000.5), 1000 + np.arange(6, 995) / 10, np.full(6, 1099.5)])
    std = float(np.sqrt(np.sum((clipped - 1050.0) ** 2) / (clipped.size - 1)))  # torch's unbiased std
    assert float(out[0]) == pytest.approx((1000.5 - 1050) / std, rel=1e-4)  # background lifted to the low clip
    assert float(out[-1]) == pytest.approx((1099.5 - 1050) / std, rel=1e-4)  # 1100 clipped to 1099.5
    assert float(out[3000 + 500]) == pytest.approx(0.0, abs=1e-4)  # 1050: the foreground mean
    assert float(out[3000 + 200]) == pytest.approx((1020 - 1050) / std, rel=1e-4)


def test_foreground_zscore_uses_the_given_percentiles():
    values = torch.cat([torch.zeros(3000), 1000 + torch.arange(1001.0) / 10]).reshape(1, 4001, 1, 1)
    out = NormalizeForegroundd(keys="image", low_pct=20, high_pct=80)({"image": values})["image"].flatten().double()
    # 20th/80th percentiles of 1000.0, 1000.1, ..., 1100.0: 1020 and 1080 (linear interpolation, numpy's default)
    foreground = 1000 + np.arange(1001) / 10
    low, high = np.percentile(foreground, [20, 80])
    clipped = np.clip(foreground, low, high)
    mean, std = clipped.mean(), clipped.std(ddof=1)
    assert (low, high) == pytest.approx((1020.0, 1080.0))
    assert float(out[0]) == pytest.approx((1020.0 - mean) / std, rel=1e-5)  # background lifted to the low clip
    assert float(out[-1]) == pytest.approx((1080.0 - mean) / std, rel=1e-5)


def test_foreground_zscore_of_one_or_two_foreground_voxels():
    # one voxel above Otsu's cut: no spread to divide by, only the mean is removed
    one = NormalizeForegroundd(keys="image")({"image": torch.tensor([0.0, 0, 0, 10]).reshape(1, 4, 1, 1)})["image"]
    assert one.flatten().tolist() == pytest.approx([-2.5, -2.5, -2.5, 7.5])
    # two: clipped to their 0.5/99.5 percentiles a, b (std |a - b| / sqrt 2), so they become -+1/sqrt 2
    two = NormalizeForegroundd(keys="image")({"image": torch.tensor([0.0] * 6 + [10, 20]).reshape(1, 8, 1, 1)})["image"]
    assert two.flatten().tolist() == pytest.approx([-0.5 ** 0.5] * 7 + [0.5 ** 0.5], rel=1e-5)


def test_voxels_exactly_at_otsus_cut_are_background():
    # values 0..2 in 256 bins: the cut is the first bin's centre, 2**-8, where two voxels lie; the foreground
    # is then 1 and 2 only, each clipped to its 0.5/99.5 percentile: -1/sqrt 2 and +1/sqrt 2
    values = torch.tensor([0.0] * 4 + [2.0**-8] * 2 + [1.0, 2.0]).reshape(1, 8, 1, 1)
    out = NormalizeForegroundd(keys="image")({"image": values})["image"].flatten().tolist()
    assert out == pytest.approx([-0.5 ** 0.5] * 7 + [0.5 ** 0.5], rel=1e-5)


def test_foreground_zscore_of_more_than_2_to_the_24_foreground_voxels():
    # torch.quantile takes at most 2**24 values: the percentiles come from a regular sub-sample
    half = 2**23 + 1
    values = torch.cat([torch.zeros(4000), torch.full((half,), 100.0), torch.full((half,), 110.0)])
    out = NormalizeForegroundd(keys="image")({"image": values.reshape(1, -1, 1, 1)})["image"].flatten()
    # halves of 100 and 110 (mean 105, std 5): background clipped to 100, so -1, and +1
    assert float(out[0]) == pytest.approx(-1.0, rel=1e-4) and float(out[-1]) == pytest.approx(1.0, rel=1e-4)
    assert float(out[4000]) == pytest.approx(-1.0, rel=1e-4)


def test_foreground_zscore_keeps_the_metatensor_geometry_and_operations():
    from monai.data import MetaTensor

    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    operations = [{"class": "Orientationd", "orig_size": (4, 1, 1)}]
    image = MetaTensor(torch.tensor([0.0, 0, 0, 10]).reshape(1, 4, 1, 1), affine=affine, applied_operations=operations)
    out = NormalizeForegroundd(keys="image")({"image": image})["image"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine.double())
    assert out.applied_operations == operations and out.flatten().tolist() == pytest.approx([-2.5, -2.5, -2.5, 7.5])


@pytest.mark.parametrize("low, high", [(0.0, 100.0), (0.0, 50.0), (49.0, 50.0)])
def test_foreground_percentiles_from_0_to_100_are_accepted(low, high):
    assert (NormalizeForegroundd(keys="image", low_pct=low, high_pct=high).low_pct, high) == (low, high)


@pytest.mark.parametrize("low, high", [(50.0, 50.0), (0.0, 100.5), (-0.5, 50.0), (60.0, 40.0)])
def test_foreground_percentiles_outside_0_to_100_or_not_increasing_are_refused(low, high):
    with pytest.raises(ValueError) as caught:
        NormalizeForegroundd(keys="image", low_pct=low, high_pct=high)
    assert str(caught.value) == f"foreground percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}"


def test_gif_shows_the_subjects_right_on_the_viewers_left_and_anterior_up(tmp_path):
    shape = (24, 20, 10)  # stored P, S, L: RAS (10 x 24 x 20) with 4.0 x 0.9 x 1.2 mm voxels
    world = nib.affines.apply_affine(PERMUTED_AFFINE, np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1))
    centre = world.reshape(-1, 3).mean(0)
    image = np.zeros(shape, np.float32)
    image[(world[..., 0] > centre[0]) & (world[..., 1] > centre[1])] = 1.0  # right (+x) and anterior (+y) in RAS+
    assert image.mean() == pytest.approx(0.25, abs=0.05)
    path = write_gif(tmp_path / "case.gif", image, np.zeros(shape, np.uint8), None, PERMUTED_AFFINE, {},
                     GifSettings(frames=3))
    frames = iio.imread(path, index=None)[..., :3].astype(float).mean(-1)
    # by hand: 4 mm columns, 0.9 mm rows: each column 4x as wide as a row is high, then 6x to reach 128 rows
    assert frames.shape[1:] == (24 * 6, 2 * 10 * 24 + LEGEND_WIDTH)
    width = (frames.shape[2] - LEGEND_WIDTH) // 2  # image and prediction panels
    for frame in frames:
        rows, cols = frame.shape[0] // 2, width // 2  # the block fills exactly one quadrant of the panel
        quadrants = {"top left": frame[16:rows, :cols], "top right": frame[16:rows, cols:width],  # below the caption
                     "bottom left": frame[rows:, :cols], "bottom right": frame[rows:, cols:width]}
        means = {k: float(q.mean()) for k, q in quadrants.items()}
        assert means["top left"] > 200 and max(means["top right"], means["bottom left"], means["bottom right"]) < 50, means


def test_thick_slices_average_slabs_and_interpolate_linearly_between_them():
    ramp = np.tile(2.0 * np.arange(9, dtype=np.float32), (2, 2, 1))  # 0, 2, ..., 16 along the last axis
    out = apply_shift(ramp, "thick_slices", 1, seed=0)[0, 0]
    # 2-voxel slabs (edge repeated) every 2nd slice: (0+0)/2, (2+4)/2, (6+8)/2, (10+12)/2, (14+16)/2
    # = 0, 3, 7, 11, 15 at slices 0, 2, 4, 6, 8; halfway in between on the odd slices
    assert out.tolist() == pytest.approx([0, 1.5, 3, 5, 7, 9, 11, 13, 15])
    step = np.tile(np.array([0, 0, 0, 9, 9, 9, 9], np.float32), (1, 1, 1))
    out = apply_shift(step, "thick_slices", 2, seed=0)[0, 0]
    # 3-voxel slabs centred on slices 0, 3, 6: 0, 6, 9; a third of the way on the slices between
    assert out.tolist() == pytest.approx([0, 2, 4, 6, 7, 8, 9])


def test_statistics_volume_is_the_voxel_count_times_the_affines_determinant(irregular_affine, corner_touching_organs):
    image = np.ones(corner_touching_organs.shape, np.float32)
    stats = structure_statistics(corner_touching_organs, image, irregular_affine, {"corner": (1,), "all": (1, 2, 3)})
    voxel_mm3 = abs(np.linalg.det(irregular_affine[:3, :3]))  # the volume of the voxel's parallelepiped
    assert stats["corner"]["volume_ml"] == pytest.approx(16 * voxel_mm3 / 1000)
    assert stats["all"]["voxels"] == 48 and stats["all"]["volume_ml"] == pytest.approx(48 * voxel_mm3 / 1000)
    assert stats["all"]["components"] == 4 and stats["all"]["mean_intensity"] == 1.0


def test_gif_volumes_are_turned_to_ras_as_the_affine_says():
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # stored P, S, L
    ras = to_ras(volume, PERMUTED_AFFINE)
    # by hand: R runs against the stored L axis, A against P, S along S
    assert ras.shape == (6, 4, 5) and ras[0, 0, 0] == volume[3, 0, 5] and ras[5, 3, 4] == volume[0, 4, 0]
    assert np.array_equal(ras, np.flip(volume, (0, 2)).transpose(2, 0, 1))
    assert ras_spacing(PERMUTED_AFFINE) == pytest.approx(PERMUTED_RAS_SPACING)
    assert ras_spacing(OBLIQUE_AFFINE) == pytest.approx(OBLIQUE_RAS_SPACING)


def test_region_tasks_give_integer_labels_by_the_brats_rule_or_the_given_order():
    from swinbob.infer.outputs import to_labels

    logits = torch.tensor([[5.0, -5, -5, 5], [5, 5, -5, 5], [-5, -5, -5, 5]])[:, :, None, None]  # TC, WT, ET
    brats = to_labels(logits, "regions", et_label=4)
    assert brats.flatten().tolist() == [1, 2, 0, 4] and not brats.is_floating_point()  # NCR, SNFH, none, ET
    ordered = to_labels(torch.sigmoid(logits), "regions", are_logits=False, region_labels=(1, 2, 3))
    assert ordered.flatten().tolist() == [2, 2, 0, 3] and not ordered.is_floating_point()


class _Saturated(torch.nn.Module):
    """Logits +-100 everywhere (channel 0 high): probabilities of exactly 1 and 0 in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = torch.full_like(x[:, :1], 100.0)
        return torch.cat([high, -high], 1) + 0 * self.anchor


@pytest.mark.parametrize("mode", ["softmax", "regions"])
def test_flip_tta_of_certain_predictions_gives_finite_logits_of_a_millionth_margin(mode):
    from swinbob.infer.tta import flip_tta_logits
    from swinbob.infer.window import WindowSettings

    out = flip_tta_logits(_Saturated().eval(), torch.zeros(1, 1, 8, 8, 8), WindowSettings((8, 8, 8), 1, 0.0), mode)
    assert torch.isfinite(out).all()
    # probabilities kept inside [1e-6, 1 - 1e-6]: log(1 - 1e-6), log(1e-6); logit(1 - 1e-6) = -logit(1e-6) = ln(999999)
    expected = [-1e-6, np.log(1e-6)] if mode == "softmax" else [np.log(999999.0), -np.log(999999.0)]
    assert out[0, :, 3, 3, 3].tolist() == pytest.approx(expected, abs=0.02)  # float32 rounding of 1 - 1e-6


def test_probabilities_take_the_input_grid_of_a_4d_image_and_refuse_another_grid(tmp_path, monkeypatch):
    from swinbob.infer import statistics

    reference = tmp_path / "two_channels.nii.gz"  # a 4D input (two channels in one file): its grid is the first 3 axes
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.float32), PERMUTED_AFFINE), reference)
    probs = torch.rand(3, 4, 5, 6)
    monkeypatch.setattr(statistics, "invert_to_input", lambda values, image, preprocess: values)  # already on the input grid
    written = nib.load(statistics.write_probabilities(tmp_path / "p.nii.gz", probs, None, None, reference))
    assert written.shape == (4, 5, 6, 3) and np.allclose(written.get_fdata(), probs.permute(1, 2, 3, 0).numpy())
    with pytest.raises(ValueError, match=r"shape \(4, 5, 5\) differ from the input image's \(4, 5, 6\)"):
        statistics.write_probabilities(tmp_path / "q.nii.gz", probs[:, :, :, :5], None, None, reference)
