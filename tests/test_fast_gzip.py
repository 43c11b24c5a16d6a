"""``.nii.gz`` through ISA-L (``isal``) when installed: same voxels, files any gzip reader opens."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from swinbob import files

isal = pytest.importorskip("isal")


@pytest.fixture
def volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(0, 100, (23, 17, 11)).astype(np.float32), np.diag([1.5, 2.0, 3.0, 1.0])


def test_isal_is_used_when_installed_and_can_be_switched_off(tmp_path, volume):
    assert files.use_fast_gzip() is True
    assert nib.openers.Opener.compress_ext_map[".gz"][0] is files._isal_gzip_open
    assert nib.openers.ImageOpener.compress_ext_map[".gz"][0] is files._isal_gzip_open
    try:
        assert files.use_fast_gzip(False) is False
        assert nib.openers.ImageOpener.compress_ext_map[".gz"] == files._NIBABEL_GZ
    finally:
        files.use_fast_gzip()


def test_files_written_with_isal_read_back_the_same_everywhere(tmp_path, volume):
    array, affine = volume
    files.write_nifti(tmp_path / "fast.nii.gz", array, affine)
    raw = gzip.decompress((tmp_path / "fast.nii.gz").read_bytes())  # a plain gzip stream, no file name
    assert (tmp_path / "fast.nii.gz").read_bytes()[3] == 0  # FLG: no FNAME field
    files.use_fast_gzip(False)
    try:
        files.write_nifti(tmp_path / "slow.nii.gz", array, affine)
        slow, _ = files.read_nifti(tmp_path / "fast.nii.gz")
    finally:
        files.use_fast_gzip()
    fast, fast_affine = files.read_nifti(tmp_path / "slow.nii.gz")
    assert np.array_equal(slow, array) and np.array_equal(fast, array) and np.allclose(fast_affine, affine)
    assert raw == gzip.decompress((tmp_path / "slow.nii.gz").read_bytes())  # same NIfTI bytes inside


def test_a_truncated_isal_file_is_still_reported_by_name(tmp_path, volume):
    files.write_nifti(tmp_path / "cut.nii.gz", *volume)
    data = (tmp_path / "cut.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(files.NiftiError, match="cut.nii.gz"):
        files.read_nifti(tmp_path / "cut.nii.gz")
