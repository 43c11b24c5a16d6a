"""SOLF on broken inputs: each bad scan is recorded as failed with its reason and the run goes on;
the exit status is non-zero only for configuration errors (2) or when every scan failed (1)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from swinbob.data.phantoms import write_cohort
from swinbob.solf.cli import organ_filtering_entry
from swinbob.tasks import UKBOB_CHANNELS

pytestmark = pytest.mark.faults
GOOD = 22
EXPECTED_REASONS = {
    "bad_truncated": "truncated or corrupt",
    "bad_garbage": "not a readable NIfTI",
    "bad_4d": "expected a 3D volume",
    "bad_out_of_map": "outside the map",
    "bad_negative": "negative",
    "bad_fractional": "fractional",
    "bad_grid_shape": "grid mismatch",
    "bad_grid_affine": "grid mismatch",
    "bad_no_images": "images not found",
}


def _run(labels: Path, out: Path, *extra: str) -> int:
    return organ_filtering_entry(["--input_dir", str(labels), "--output_dir", str(out), "--workers", "1",
                                  "--no_figure", "--log_level", "ERROR", "--min_population", "10", *extra])


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    """A cohort of good phantoms plus one scan per kind of bad input (labels and images)."""
    root = tmp_path_factory.mktemp("solf_broken")
    write_cohort("ukbob", root / "cohort", GOOD, shape=(32, 32, 40), seed=5)
    labels, images = root / "labels", root / "images"
    shutil.copytree(root / "cohort" / "labelsTr", labels)
    shutil.copytree(root / "cohort" / "imagesTr", images)
    good = nib.load(labels / "ukbob_0000.nii.gz")
    label, affine = np.asanyarray(good.dataobj), good.affine
    raw = (labels / "ukbob_0000.nii.gz").read_bytes()
    (labels / "bad_truncated.nii.gz").write_bytes(raw[: len(raw) * 3 // 5])
    (labels / "bad_garbage.nii.gz").write_bytes(b"this is not a NIfTI file " * 40)
    _save(labels / "bad_4d.nii.gz", np.stack([label, label], axis=-1), affine)
    _save(labels / "bad_out_of_map.nii.gz", np.where(label == 5, 80, label).astype(np.uint8), affine)
    _save(labels / "bad_negative.nii.gz", np.where(label == 5, -1, label).astype(np.int16), affine)
    _save(labels / "bad_fractional.nii.gz", np.where(label == 5, 1.5, label).astype(np.float32), affine)
    shifted = affine.copy()
    shifted[:3, 3] += 5.0
    for case, shape, image_affine in (("bad_grid_shape", (32, 32, 39), affine), ("bad_grid_affine", label.shape, shifted)):
        shutil.copy(labels / "ukbob_0000.nii.gz", labels / f"{case}.nii.gz")
        for channel in UKBOB_CHANNELS:
            _save(images / f"{case}_{channel}.nii.gz", np.ones(shape, np.float32), image_affine)
    shutil.copy(labels / "ukbob_0000.nii.gz", labels / "bad_no_images.nii.gz")
    assert _run(labels, root / "out", "--image_dir", str(images)) == 0
    return root


def _failures(out: Path) -> dict[str, str]:
    with open(out / "report" / "failures.csv", newline="") as handle:
        return {row["case_id"]: row["reason"] for row in csv.DictReader(handle)}


@pytest.mark.parametrize("case", sorted(EXPECTED_REASONS))
def test_each_bad_scan_is_recorded_with_its_reason(broken, case):
    reason = _failures(broken / "out")[case]
    assert EXPECTED_REASONS[case] in reason


def test_the_run_goes_on_and_reports_every_failure(broken):
    out = broken / "out"
    assert set(_failures(out)) == set(EXPECTED_REASONS)
    assert {f["case_id"] for f in json.loads((out / "report" / "failures.json").read_text())} == set(EXPECTED_REASONS)
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["scans"]["failed"] == len(EXPECTED_REASONS) and summary["scans"]["measured"] == GOOD
    dataset = json.loads((out / "dataset.json").read_text())
    listed = {Path(e["label"]).name for e in dataset["training"] + dataset["validation"]}
    assert not any(name.startswith("bad_") for name in listed) and len(listed) + summary["scans"]["excluded"] == GOOD
    assert not any(p.name.startswith("bad_") for p in (out / "labelsTr").iterdir())


def test_a_fixed_file_is_measured_on_the_next_run(broken, tmp_path):
    labels, out = tmp_path / "labels", tmp_path / "out"
    shutil.copytree(broken / "labels", labels)
    shutil.copytree(broken / "out", out)
    (labels / "bad_garbage.nii.gz").unlink()
    shutil.copy(labels / "ukbob_0001.nii.gz", labels / "bad_garbage.nii.gz")
    os.utime(labels / "bad_garbage.nii.gz", ns=(1, 1))
    assert _run(labels, out, "--image_dir", str(broken / "images")) == 0
    assert "bad_garbage" in _failures(out) and "images not found" in _failures(out)["bad_garbage"]


def test_exit_status_is_1_when_every_scan_failed(broken, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in ("bad_truncated", "bad_garbage"):
        shutil.copy(broken / "labels" / f"{case}.nii.gz", labels)
    assert _run(labels, tmp_path / "out") == 1
    assert set(_failures(tmp_path / "out")) == {"bad_truncated", "bad_garbage"}


@pytest.mark.parametrize("problem", ["missing_input", "empty_input", "bad_rules", "shard_range", "sharded_all",
                                     "output_is_input", "missing_images"])
def test_configuration_errors_exit_with_2(broken, tmp_path, problem):
    labels = broken / "labels"
    empty = tmp_path / "empty"
    empty.mkdir()
    rules = tmp_path / "rules.json"
    rules.write_text('{"organs": {"not_an_organ": {}}}')
    args = {
        "missing_input": (tmp_path / "nowhere", tmp_path / "out"),
        "empty_input": (empty, tmp_path / "out"),
        "bad_rules": (labels, tmp_path / "out", "--rules", str(rules)),
        "shard_range": (labels, tmp_path / "out", "--stage", "features", "--num_shards", "2", "--shard_id", "2"),
        "sharded_all": (labels, tmp_path / "out", "--num_shards", "2"),
        "output_is_input": (broken / "cohort" / "labelsTr", broken / "cohort"),
        "missing_images": (labels, tmp_path / "out", "--image_dir", str(tmp_path / "no_images")),
    }[problem]
    assert _run(*args) == 2
