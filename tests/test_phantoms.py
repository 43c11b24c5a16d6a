"""Synthetic cohorts: determinism, files on disk, dataset.json, anatomy and the CLI."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from swinbob.data import phantoms
from swinbob.files import read_nifti, voxel_spacing
from swinbob.labels import BTCV_LABELS, TOTALVIBE_LABELS, ids_by_name
from swinbob.data.phantoms import DomainShift, brats_case, btcv_case, main, ukbob_case, write_cohort

CASE_FUNCTIONS = {"ukbob": ukbob_case, "btcv": btcv_case, "brats": brats_case}
TV = ids_by_name(TOTALVIBE_LABELS)
NUM_CASES = 3


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """One small cohort per task, written once for the whole module; task -> dataset.json."""
    root = tmp_path_factory.mktemp("phantoms")
    return {task: write_cohort(task, root / task, NUM_CASES, seed=5) for task in phantoms.TASKS}


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


def expected_label_path(task: str, index: int, case_id: str) -> str:
    return {"ukbob": f"labelsTr/{case_id}.nii.gz", "btcv": f"labelsTr/label{index + 1:04d}.nii.gz",
            "brats": f"{case_id}/{case_id}-seg.nii.gz"}[task]


def entry_files(dataset_json: Path) -> list[tuple[list[Path], Path]]:
    data = json.loads(dataset_json.read_text())
    entries = data["training"] + data["validation"]
    to_list = (lambda image: [image] if isinstance(image, str) else image)
    return [([dataset_json.parent / p for p in to_list(e["image"])], dataset_json.parent / e["label"]) for e in entries]


# ------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", phantoms.TASKS)
def test_case_is_determined_by_seed_and_index(task):
    make = CASE_FUNCTIONS[task]
    first, again, other_seed = make(2, seed=1), make(2, seed=1), make(2, seed=2)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    np.testing.assert_array_equal(first.affine, again.affine)
    assert not np.array_equal(first.label, other_seed.label)
    assert not np.array_equal(first.label, make(3, seed=1).label)


@pytest.mark.parametrize("task", phantoms.TASKS)
def test_default_shapes_match_signatures(task):
    default = inspect.signature(CASE_FUNCTIONS[task]).parameters["shape"].default
    assert tuple(default) == phantoms.DEFAULT_SHAPES[task]
    case = CASE_FUNCTIONS[task](0)
    assert case.image.shape == (len(case.channel_names), *default) and case.image.dtype == np.float32
    assert case.label.shape == tuple(default) and case.label.dtype == np.uint8


def test_case_does_not_depend_on_cohort_size(tmp_path):
    small = write_cohort("btcv", tmp_path / "small", 2, seed=3)
    large = write_cohort("btcv", tmp_path / "large", 4, seed=3)
    for name in ("imagesTr/img0002.nii.gz", "labelsTr/label0002.nii.gz"):
        a, _ = read_nifti(small.parent / name)
        b, _ = read_nifti(large.parent / name)
        np.testing.assert_array_equal(a, b)
    label, _ = read_nifti(large.parent / "labelsTr/label0002.nii.gz")
    np.testing.assert_array_equal(label, btcv_case(1, seed=3).label)


# ------------------------------------------------------------------------------ files on disk


@pytest.mark.parametrize("task", phantoms.TASKS)
def test_written_files_match_cases(cohorts, task):
    files = entry_files(cohorts[task])
    assert len(files) == NUM_CASES
    by_label = {label: images for images, label in files}
    for index in range(NUM_CASES):
        case = CASE_FUNCTIONS[task](index, seed=5)
        label_path = cohorts[task].parent / expected_label_path(task, index, case.case_id)
        label, affine = read_nifti(label_path)
        assert nib.load(label_path).get_data_dtype() == np.uint8
        np.testing.assert_array_equal(label, case.label)
        np.testing.assert_allclose(affine, case.affine, atol=1e-6)
        images = by_label[label_path]
        assert len(images) == len(case.channel_names)
        for path, channel, name in zip(images, case.image, case.channel_names):
            data, image_affine = read_nifti(path)
            assert name in path.name or task == "btcv"
            assert data.shape == case.label.shape
            assert nib.load(path).get_data_dtype() == (np.int16 if task == "btcv" else np.float32)
            np.testing.assert_allclose(data, channel, atol=1e-3)
            np.testing.assert_allclose(image_affine, case.affine, atol=1e-6)


@pytest.mark.parametrize("task", phantoms.TASKS)
def test_affines_are_anisotropic_and_not_ras(cohorts, task):
    for _, label_path in entry_files(cohorts[task]):
        affine = nib.load(label_path).affine
        spacing = voxel_spacing(affine)
        assert spacing.max() / spacing.min() > 1.1
        assert nib.aff2axcodes(affine) != ("R", "A", "S")
        assert np.abs(affine[:3, 3]).max() > 1.0


@pytest.mark.parametrize("task", phantoms.TASKS)
def test_dataset_json_is_decathlon_format(cohorts, task):
    data = json.loads(cohorts[task].read_text())
    channels = CASE_FUNCTIONS[task](0).channel_names
    assert data["modality"] == data["channel_names"] == {str(i): c for i, c in enumerate(channels)}
    assert data["tensorImageSize"] == ("4D" if len(channels) > 1 else "3D")
    assert data["numTraining"] == NUM_CASES
    assert len(data["validation"]) >= 1 and len(data["training"]) >= 1
    label_ids = {int(k) for k in data["labels"]}
    for entry in data["training"] + data["validation"]:
        assert isinstance(entry["image"], str) == (len(channels) == 1)
        if task == "brats":
            assert entry["fold"] in range(phantoms.NUM_FOLDS)
    for images, label_path in entry_files(cohorts[task]):
        assert all(p.is_file() for p in images) and label_path.is_file()
        assert set(np.unique(read_nifti(label_path)[0]).tolist()) <= label_ids


def test_layouts_follow_the_benchmarks(cohorts):
    data = {task: json.loads(path.read_text()) for task, path in cohorts.items()}
    ukbob = sorted(data["ukbob"]["training"] + data["ukbob"]["validation"], key=lambda e: e["label"])[0]
    assert ukbob["image"] == [f"imagesTr/ukbob_0000_{c}.nii.gz" for c in phantoms.UKBOB_CHANNELS]
    assert ukbob["label"] == "labelsTr/ukbob_0000.nii.gz"
    btcv = {e["image"]: e["label"] for e in data["btcv"]["training"] + data["btcv"]["validation"]}
    assert btcv["imagesTr/img0001.nii.gz"] == "labelsTr/label0001.nii.gz"
    brats = {e["label"] for e in data["brats"]["training"] + data["brats"]["validation"]}
    assert "BraTS-GLI-00000-000/BraTS-GLI-00000-000-seg.nii.gz" in brats


def test_split_is_seeded_and_keeps_a_validation_case(tmp_path):
    assert len(phantoms._split_cases(2, 0.25, seed=0)[0]) == 1
    assert phantoms._split_cases(1, 0.25, seed=0)[0] == set()
    assert phantoms._split_cases(20, 0.25, seed=4) == phantoms._split_cases(20, 0.25, seed=4)
    validation, folds = phantoms._split_cases(20, 0.25, seed=4)
    assert len(validation) == 5 and sorted(folds) == sorted(list(range(5)) * 4)
    with pytest.raises(ValueError, match="val_fraction"):
        write_cohort("btcv", tmp_path, 2, val_fraction=1.0)


# ---------------------------------------------------------------------------------- anatomy


def test_ukbob_anatomy_in_world_coordinates(cohorts):
    _, label_path = entry_files(cohorts["ukbob"])[0]
    label, affine = read_nifti(label_path)
    present = set(np.unique(label).tolist())
    assert len(present - {0}) >= 15 and max(present) <= 72
    body_x = world_centroid(label > 0, affine)[0]
    # RAS+: x increases towards the subject's right.
    for right, left in [("kidney_right", "kidney_left"), ("adrenal_gland_right", "adrenal_gland_left"),
                        ("autochthon_right", "autochthon_left"), ("iliopsoas_right", "iliopsoas_left"),
                        ("gluteus_maximus_right", "gluteus_maximus_left"), ("femur_right", "femur_left"),
                        ("hip_right", "hip_left"), ("liver", "spleen")]:
        assert world_centroid(label == TV[right], affine)[0] > body_x > world_centroid(label == TV[left], affine)[0]
    assert ndimage.label(label == TV["vertebra_body"])[1] >= 4
    for organ in ("liver", "spleen", "kidney_left", "kidney_right", "pancreas", "aorta", "inferior_vena_cava"):
        assert ndimage.label(label == TV[organ])[1] == 1, organ
    spine, liver = (world_centroid(label == TV[n], affine) for n in ("vertebra_body", "liver"))
    assert spine[1] < liver[1]  # the spine is posterior (RAS: y increases anteriorly)


def test_organ_statistics_vary_like_a_population():
    volumes = [np.count_nonzero(ukbob_case(i, seed=9).label == TV["liver"]) for i in range(4)]
    assert np.std(volumes) / np.mean(volumes) > 0.02  # varies per case ...
    assert max(volumes) / min(volumes) < 2.0  # ... but consistently


def test_ukbob_dixon_contrasts():
    case = ukbob_case(1)
    fat, in_phase, opposed, water = case.image
    subcutaneous, liver = case.label == TV["subcutaneous_fat"], case.label == TV["liver"]
    assert fat[subcutaneous].mean() > 3 * water[subcutaneous].mean()
    assert water[liver].mean() > 3 * fat[liver].mean()
    body = case.label > 0
    assert np.abs(in_phase - (fat + water))[body].mean() < 0.05 * in_phase[body].mean()
    assert np.abs(opposed - np.abs(water - fat))[body].mean() < 0.05 * in_phase[body].mean()


def test_btcv_organs_and_hounsfield_units():
    case = btcv_case(0)
    assert set(np.unique(case.label).tolist()) == set(BTCV_LABELS)
    ct = case.image[0]
    assert ct.min() >= -1024 and ct.max() <= 3071
    assert np.median(ct[0]) < -900  # air at the edge of the field of view
    btcv = ids_by_name(BTCV_LABELS)
    assert 30 < np.median(ct[case.label == btcv["liver"]]) < 100
    assert np.median(ct[case.label == btcv["aorta"]]) > 120
    for seed in (1, 2):
        assert set(np.unique(btcv_case(3, seed=seed).label).tolist()) == set(BTCV_LABELS)


@pytest.mark.parametrize("et_label", [3, 4])
def test_brats_labels_and_nested_tumour(et_label):
    for index in range(3):
        case = brats_case(index, et_label=et_label)
        assert set(np.unique(case.label).tolist()) == {0, 1, 2, et_label}
        ncr = case.label == 1
        assert np.all(np.isin(case.label[ndimage.binary_dilation(ncr)], [1, et_label]))  # ET rim encloses NCR
    t1n, t1c, t2w, t2f = case.image
    et, edema, brain = case.label == et_label, case.label == 2, (case.label == 0) & (t1n > 0)
    assert t1c[et].mean() > 1.3 * t1c[brain].mean() and t1c[ncr].mean() < t1c[brain].mean()
    assert t2f[edema].mean() > 1.3 * t2f[brain].mean() and t2w[edema].mean() > t2w[brain].mean()


# ------------------------------------------------------------------------------ domain shift


@pytest.mark.parametrize("task", phantoms.TASKS)
def test_domain_shift_changes_image_not_anatomy(task):
    clean = CASE_FUNCTIONS[task](1, shape=(32, 32, 32))
    shifted = CASE_FUNCTIONS[task](1, shape=(32, 32, 32), shift=DomainShift.preset("strong"))
    np.testing.assert_array_equal(clean.label, shifted.label)
    np.testing.assert_array_equal(clean.affine, shifted.affine)
    assert np.abs(clean.image - shifted.image).mean() > 0.01 * np.ptp(clean.image)
    unshifted = CASE_FUNCTIONS[task](1, shape=(32, 32, 32), shift=DomainShift.preset("none"))
    np.testing.assert_array_equal(clean.image, unshifted.image)


def test_domain_shift_validation():
    with pytest.raises(ValueError, match="preset"):
        DomainShift.preset("extreme")
    with pytest.raises(ValueError):
        DomainShift(gamma=0.0)
    mild = DomainShift.preset("mild")
    assert 0 < mild.bias_field < DomainShift.preset("strong").bias_field


# ---------------------------------------------------------------------------------------- CLI


def test_cli_writes_a_cohort_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cohort"
    argv = ["--task", "brats", "--out_dir", str(out), "--num_cases", "2", "--size", "32", "32", "32",
            "--seed", "1", "--shift", "mild", "--noise", "0.05", "--val_fraction", "0.5", "--et_label", "4"]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    data = json.loads((out / "dataset.json").read_text())
    assert len(data["training"]) == len(data["validation"]) == 1
    assert data["labels"]["4"] == "ET" and data["phantom"]["shift"]["noise"] == 0.05
    assert data["phantom"]["shift"]["bias_field"] == DomainShift.preset("mild").bias_field
    assert read_nifti(out / data["training"][0]["label"])[0].shape == (32, 32, 32)

    assert main(argv) != 0
    assert "overwrite" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="overwrite"):
        write_cohort("brats", out, 2)
    assert main([*argv, "--overwrite"]) == 0
