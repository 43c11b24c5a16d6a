"""SOLF on TotalSegmentator's default output: one folder of per-structure masks per scan.

A CT phantom cohort in TotalSegmentator IDs (with kidney swaps and organ fragments) is written twice:
as multilabel files (``--ml``) and as folders of masks named by the label set (plus empty masks, a
mask with an unknown name and two masks that overlap). Both runs must take the same decisions and
write the same cleaned labels; the unknown name and the overlap are reported.
"""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from swinbob.data.phantoms import btcv_case
from swinbob.errors import ConfigError
from swinbob.files import NiftiError, read_nifti, write_nifti
from swinbob.labels import BTCV_LABELS, IGNORE_LABEL, TOTALSEGMENTATOR_LABELS
from swinbob.solf.cases import discover_inputs
from swinbob.solf.cli import organ_filtering_entry
from swinbob.solf.features import LabelError
from swinbob.solf.inject import fragment, swap
from swinbob.solf.labelsets import remap_by_name
from swinbob.solf.structures import merge_structures, structure_ids

TS = {name: i for i, name in TOTALSEGMENTATOR_LABELS.items()}
BTCV_TO_TS = {"right_kidney": "kidney_right", "left_kidney": "kidney_left", "right_adrenal_gland": "adrenal_gland_right",
              "left_adrenal_gland": "adrenal_gland_left", "portal_and_splenic_veins": "portal_vein_and_splenic_vein"}
NUM_CASES, ODD_CASE = 22, 7
EMPTY = ("brain", "femur_left")  # TotalSegmentator writes every structure, most of them empty


def write_folder(folder, label: np.ndarray, affine: np.ndarray) -> None:
    """One uint8 mask per structure of ``label`` named by TotalSegmentator, plus empty ones."""
    for organ in [int(v) for v in np.unique(label) if v not in (0, IGNORE_LABEL)]:
        write_nifti(folder / f"{TOTALSEGMENTATOR_LABELS[organ]}.nii.gz", (label == organ).astype(np.uint8), affine)
    for name in EMPTY:
        write_nifti(folder / f"{name}.nii.gz", np.zeros(label.shape, np.uint8), affine)


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    """SOLF over the same cohort as multilabel files and as structure folders: (root, exit codes)."""
    root = tmp_path_factory.mktemp("solf_folders")
    rng = np.random.default_rng(9)
    source = {i: BTCV_TO_TS.get(n, n) for i, n in BTCV_LABELS.items()}
    for index in range(NUM_CASES):
        case = btcv_case(index, seed=4)
        label = remap_by_name(case.label, source, TOTALSEGMENTATOR_LABELS)
        if index < 3:
            label = swap(label, TS["kidney_left"], TS["kidney_right"])
        elif index < 6:
            label = fragment(label, TS[("liver", "spleen", "stomach")[index - 3]], case.affine, rng)
        folder = root / "folders" / case.case_id
        write_folder(folder, label, case.affine)
        if index == ODD_CASE:  # the spleen mask also claims a slab of the liver; a mask no label set knows
            slab = np.zeros(label.shape, bool)
            slab[:, :, label.shape[2] // 2] = True
            overlap = slab & (label == TS["liver"])
            assert overlap.sum() > 10
            write_nifti(folder / "spleen.nii.gz", ((label == TS["spleen"]) | overlap).astype(np.uint8), case.affine)
            write_nifti(folder / "body_trunc.nii.gz", (label > 0).astype(np.uint8), case.affine)
            label = label.copy()
            label[overlap] = IGNORE_LABEL  # what the merge makes of voxels claimed twice
        write_nifti(root / "multi" / f"{case.case_id}.nii.gz", label, case.affine)
        write_nifti(root / "images" / f"{case.case_id}_0000.nii.gz", case.image[0], case.affine)
    codes = {}
    for form in ("multi", "folders"):
        codes[form] = organ_filtering_entry(["--input_dir", str(root / form), "--image_dir", str(root / "images"),
                                             "--channel_names", "CT", "--labels", "totalsegmentator", "--output_dir",
                                             str(root / f"out_{form}"), "--workers", "1", "--no_figure"])
    return root, codes


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_structure_folders_get_the_decisions_and_cleaned_labels_of_the_multilabel_maps(both_runs):
    root, codes = both_runs
    assert codes == {"multi": 0, "folders": 0}
    decisions = {form: _rows(root / f"out_{form}" / "report" / "decisions.csv") for form in ("multi", "folders")}
    assert len(decisions["multi"]) > 12 * NUM_CASES and decisions["folders"] == decisions["multi"]
    assert sum(r["decision"] == "rejected" for r in decisions["multi"]) >= 3  # the swaps: decisions that matter
    for form in ("multi", "folders"):  # same features, measured from the same voxels
        assert (root / f"out_{form}" / "report" / "features.csv").read_bytes() == \
            (root / "out_multi" / "report" / "features.csv").read_bytes()
    for path in sorted((root / "out_multi" / "labelsTr").iterdir()):
        ours, affine = read_nifti(root / "out_folders" / "labelsTr" / path.name, ndim=3)
        theirs, their_affine = read_nifti(path, ndim=3)
        assert np.array_equal(ours, theirs) and np.allclose(affine, their_affine), path.name


def test_unknown_names_and_overlaps_are_reported_with_the_scan(both_runs):
    root, _ = both_runs
    scans = {r["case_id"]: r for r in _rows(root / "out_folders" / "report" / "scans.csv")}
    odd = f"img{ODD_CASE + 1:04d}"
    notes = scans[odd]["notes"]
    assert "body_trunc.nii.gz" in notes and "not in the label set" in notes
    assert "liver.nii.gz and spleen.nii.gz overlap in" in notes and f"ignore ({IGNORE_LABEL})" in notes
    assert all(not r["notes"] for c, r in scans.items() if c != odd)
    assert scans[odd]["status"] == "ok"


def test_the_merge_refuses_masks_on_another_grid_and_folders_without_a_known_name(tmp_path):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    write_nifti(tmp_path / "a" / "liver.nii.gz", np.ones((8, 8, 8), np.uint8), affine)
    write_nifti(tmp_path / "a" / "spleen.nii.gz", np.ones((8, 8, 9), np.uint8), affine)
    with pytest.raises(NiftiError, match=r"\.nii\.gz: mask grid \(shape .*\) differs from that of .*\.nii\.gz") as error:
        merge_structures(tmp_path / "a", structure_ids(TOTALSEGMENTATOR_LABELS))
    assert "liver.nii.gz" in str(error.value) and "spleen.nii.gz" in str(error.value)
    write_nifti(tmp_path / "b" / "lesion.nii.gz", np.ones((8, 8, 8), np.uint8), affine)
    with pytest.raises(LabelError, match="none of its 1 mask.*lesion.nii.gz.*--labels"):
        merge_structures(tmp_path / "b", structure_ids(TOTALSEGMENTATOR_LABELS))


def test_a_scan_given_both_as_a_file_and_as_a_folder_is_refused(tmp_path):
    write_nifti(tmp_path / "in" / "s1" / "liver.nii.gz", np.ones((4, 4, 4), np.uint8), np.eye(4))
    write_nifti(tmp_path / "in" / "s1.nii.gz", np.ones((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(ConfigError, match="'s1' appears twice"):
        discover_inputs(tmp_path / "in")


def test_a_folder_scan_fails_alone_naming_its_bad_mask(tmp_path, caplog):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for index in range(3):
        case = btcv_case(index, seed=1, shape=(40, 40, 32))
        label = remap_by_name(case.label, {i: BTCV_TO_TS.get(n, n) for i, n in BTCV_LABELS.items()}, TOTALSEGMENTATOR_LABELS)
        write_folder(tmp_path / "in" / case.case_id, label, case.affine)
    write_nifti(tmp_path / "in" / "img0002" / "aorta.nii.gz", np.ones((40, 40, 31), np.uint8), affine)
    caplog.set_level(logging.WARNING)
    assert organ_filtering_entry(["--input_dir", str(tmp_path / "in"), "--labels", "totalsegmentator", "--output_dir",
                                  str(tmp_path / "out"), "--workers", "1", "--no_figure"]) == 0
    scans = {r["case_id"]: r for r in _rows(tmp_path / "out" / "report" / "scans.csv")}
    assert scans["img0002"]["status"] == "failed" and "aorta.nii.gz: mask grid" in scans["img0002"]["reason"]
    assert scans["img0001"]["status"] == scans["img0003"]["status"] == "ok"


def test_image_and_output_folders_inside_the_input_folder_are_no_scans(tmp_path):
    from swinbob.solf.pipeline import SolfConfig, case_tasks

    for path in ("in/s1.nii.gz", "in/images/s1_0000.nii.gz", "in/labelsTr/s1.nii.gz", "in/s2/liver.nii.gz"):
        write_nifti(tmp_path / path, np.ones((4, 4, 4), np.uint8), np.eye(4))
    config = SolfConfig(input_dir=tmp_path / "in", output_dir=tmp_path / "in", image_dir=tmp_path / "in" / "images",
                        channel_names=("CT",), labels="totalsegmentator")
    tasks, _ = case_tasks(config)
    assert sorted(tasks) == ["s1", "s2"] and tasks["s2"].structures == structure_ids(TOTALSEGMENTATOR_LABELS)
    assert tasks["s1"].structures == ()
