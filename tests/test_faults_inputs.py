"""Bad inputs, tried broadly: each broken header, shape, label value, intensity and channel count
below is written as a real file and fed to every consumer that reads such files:

* ``nifti``: :func:`swinbob.files.read_nifti` (the one reader everything shares);
* ``solf``: SOLF pass 1 on the scan (:func:`swinbob.solf.cases.measure_case`);
* ``labels``: the task's label check used by training and evaluation (``Task.check_label_values``);
* ``datalist``: the pre-training datalist check (``swinbob.data.loaders.entry_problems``);
* ``preprocess``: the MONAI chain training and evaluation feed the model (``data.eval_transforms``).

Each answer must be a refusal whose message names the offending file and the problem, or a
handling that is then checked (flipped axes give the same world features, squeezed singletons
the same volume, NaN never reaches a tensor). Every attempt lands in the summary table.
Paths with spaces and unicode are run end to end (SOLF, then its dataset.json into training's
datalist loading and preprocessing).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from faults_report import handled, record_input, refused
from swinbob.data.transforms import DataConfig, eval_transforms, load_datalist
from swinbob.files import NiftiError, load_nifti_header, read_nifti
from swinbob.labels import IGNORE_LABEL
from swinbob.data.loaders import entry_problems
from swinbob.data.phantoms import PhantomCase, ukbob_case, write_cohort
from swinbob.solf.cases import make_task, measure_case
from swinbob.solf.features import measure_organs, validate_labels
from swinbob.solf.outputs import CleanTask, clean_case
from swinbob.solf.cli import organ_filtering_entry
from swinbob.tasks import UKBOB_CHANNELS, get_task

pytestmark = pytest.mark.faults

SHAPE = (24, 24, 28)
UKBOB = get_task("ukbob")
BTCV = get_task("btcv")
PREPROCESS = eval_transforms(UKBOB, DataConfig.from_task(UKBOB))
BAD_CHANNEL = 2  # image rows break this channel only (opposed_phase)


class SolfRefusal(Exception):
    """SOLF recorded the scan as failed; the message is its reason."""


@dataclass(frozen=True)
class Scan:
    """The files of one test scan: a label map and its four Dixon channels (UKBOB naming)."""

    case_id: str
    label: Path
    images: tuple[Path, ...]


@dataclass(frozen=True)
class BadInput:
    """One row of the table: how to write the scan and what each consumer must answer.

    ``expect`` maps consumer -> ``"handled"`` or ``"refused:<words the message must contain>"``.
    ``culprit`` is what the message must name: the ``"label"`` file, the ``"image"`` file of
    channel :data:`BAD_CHANNEL`, the ``"case"``, or any file of the ``"scan"`` (header rows break
    every file of the scan, and a consumer may stop at the first it opens).
    """

    category: str
    name: str
    make: Callable[[Path, PhantomCase], Scan]
    expect: dict[str, str]
    culprit: str = "label"
    note: str = ""
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Writing scans
# ----------------------------------------------------------------------------------------------

def _paths(folder: Path, case_id: str, label_suffix: str = ".nii.gz") -> Scan:
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images = tuple(folder / "images" / f"{case_id}_{c}.nii.gz" for c in UKBOB_CHANNELS)
    return Scan(case_id, folder / "labels" / f"{case_id}{label_suffix}", images)


def _save(path: Path, data: np.ndarray, affine: np.ndarray, edit: Callable[[nib.Nifti1Header], None] | None = None) -> None:
    """Save ``data``; with ``edit`` the header and data are written byte by byte, because
    ``nib.save`` repairs or recomputes exactly the fields these tests break (pixdim, scaling)."""
    if edit is None:
        nib.save(nib.Nifti1Image(data, affine), str(path))
        return
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header["vox_offset"] = 352
    edit(header)
    blob = header.binaryblock + b"\0" * 4 + np.asarray(data).tobytes(order="F")
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)


def _case(folder: Path, good: PhantomCase, name: str, label: np.ndarray | None = None, affine: np.ndarray | None = None,
          images: np.ndarray | None = None, edit: Callable[[nib.Nifti1Header], None] | None = None,
          label_suffix: str = ".nii.gz") -> Scan:
    """Write a scan: ``good`` with the label, affine or images replaced; ``affine`` and the header
    ``edit`` apply to every file of the scan (one broken export), so that only the tested problem
    differs from a good scan."""
    scan = _paths(folder, name, label_suffix)
    affine = good.affine if affine is None else affine
    _save(scan.label, good.label if label is None else label, affine, edit)
    for path, channel in zip(scan.images, good.image if images is None else images):
        _save(path, channel.astype(np.float32), affine, edit)
    return scan


def _set_sform(matrix: np.ndarray) -> Callable[[nib.Nifti1Header], None]:
    """Header edit storing ``matrix`` as the sform (nibabel refuses to build such an image)."""
    def edit(header: nib.Nifti1Header) -> None:
        header["srow_x"], header["srow_y"], header["srow_z"] = matrix[0], matrix[1], matrix[2]
        header["sform_code"], header["qform_code"] = 1, 0
    return edit


def _pixdim(values: list[float], qform: int = 1) -> Callable[[nib.Nifti1Header], None]:
    """Header edit: spacing only in pixdim (sform off; qform on or off)."""
    def edit(header: nib.Nifti1Header) -> None:
        header["pixdim"][1:4] = values
        header["sform_code"], header["qform_code"] = 0, qform
        header["quatern_b"] = header["quatern_c"] = header["quatern_d"] = 0.0
    return edit


def _raw_header(folder: Path, good: PhantomCase, name: str, shape: tuple[int, ...], nifti2: bool = False,
                gz: bool = False) -> Scan:
    """A label whose header claims ``shape`` (uint8) followed by only 4 bytes of data."""
    scan = _paths(folder, name, ".nii.gz" if gz else ".nii")
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_sform(good.affine, code=1)
    header.set_qform(good.affine, code=1)
    header["vox_offset"] = len(header.binaryblock) + 4
    blob = header.binaryblock + b"\0" * 4 + b"\0" * 4
    scan.label.write_bytes(gzip.compress(blob) if gz else blob)
    for path, channel in zip(scan.images, good.image):
        _save(path, channel.astype(np.float32), good.affine)
    return scan


def _flipped(good: PhantomCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label, images and affine with the first array axis reversed and the affine compensating,
    so every voxel keeps its world position (what a scanner writing LPS instead of RAS does)."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, good.label.shape[0] - 1
    return good.label[::-1].copy(), good.image[:, ::-1].copy(), good.affine @ flip


def _flipped_case(folder: Path, good: PhantomCase, name: str) -> Scan:
    label, images, affine = _flipped(good)
    return _case(folder, good, name, label=label, affine=affine, images=images)


def _with(label: np.ndarray, where: np.ndarray, value: float, dtype: type) -> np.ndarray:
    out = label.astype(dtype)
    out[where] = value
    return out


def _image_with(good: PhantomCase, value: float) -> np.ndarray:
    images = good.image.astype(np.float32).copy()
    images[BAD_CHANNEL, 10, 11, 12] = value
    return images


REFUSE_ALL = ("nifti", "solf", "datalist", "preprocess")


def _all(expect: str, consumers: tuple[str, ...] = REFUSE_ALL) -> dict[str, str]:
    return {c: expect for c in consumers}


ROWS = [
    # --- headers -------------------------------------------------------------------------------
    BadInput("header", "sform_with_nan", lambda f, g: _case(f, g, "sform_with_nan", edit=_set_sform(
        np.where(np.eye(4) == 1, np.nan, g.affine))), _all("refused:NaN or Inf"), culprit="scan"),
    BadInput("header", "zero_spacing_column", lambda f, g: _case(f, g, "zero_spacing_column", edit=_set_sform(
        g.affine * np.array([1.0, 0.0, 1.0, 1.0]))), _all("refused:spacing"), culprit="scan"),
    BadInput("header", "zero_pixdim_qform", lambda f, g: _case(f, g, "zero_pixdim_qform", affine=np.eye(4),
             edit=_pixdim([0.0, 2.0, 3.0])), _all("refused:zero or NaN voxel spacing"), culprit="scan",
             note="nibabel alone would silently assume 1 mm"),
    BadInput("header", "zero_pixdim_no_orientation", lambda f, g: _case(f, g, "zero_pixdim_no_orientation",
             affine=np.eye(4), edit=_pixdim([2.0, 0.0, 0.0], qform=0)), _all("refused:zero or NaN voxel spacing"),
             culprit="scan"),
    BadInput("header", "singular_sform", lambda f, g: _case(f, g, "singular_sform", edit=_set_sform(
        np.array([[2.0, 2.0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0]]))), _all("refused:singular"),
             culprit="scan"),
    BadInput("header", "negative_pixdim_qform", lambda f, g: _case(f, g, "negative_pixdim_qform", affine=np.eye(4),
             edit=_pixdim([-2.0, 2.0, 3.0])), _all("handled"),
             note="read as |pixdim| like the NIfTI standard (flips live in qfac)"),
    BadInput("header", "flipped_axis_negative_spacing", lambda f, g: _flipped_case(f, g, "flipped_axis_negative_spacing"),
             _all("handled"),
             note="same world features as the unflipped scan (test below)"),
    BadInput("header", "claims_2200^3_voxels_nifti1", lambda f, g: _raw_header(f, g, "claims_2200^3_voxels_nifti1",
             (2200, 2200, 2200)), _all("refused:larger than")),
    BadInput("header", "claims_10^10_voxels_nifti2", lambda f, g: _raw_header(f, g, "claims_10^10_voxels_nifti2",
             (100000, 100000, 1), nifti2=True), _all("refused:larger than")),
    BadInput("header", "claims_10^8_voxels_holds_4_bytes", lambda f, g: _raw_header(f, g, "claims_10^8_voxels_holds_4_bytes",
             (500, 500, 400)), _all("refused:truncated")),
    BadInput("header", "claims_10^8_voxels_gz_holds_4_bytes", lambda f, g: _raw_header(
        f, g, "claims_10^8_voxels_gz_holds_4_bytes", (500, 500, 400), gz=True), _all("refused:truncated")),
    BadInput("header", "dimension_of_size_0", lambda f, g: _case(f, g, "dimension_of_size_0",
             label=np.zeros((24, 0, 28), np.uint8)), _all("refused:empty volume")),
    BadInput("header", "zero_byte_file", lambda f, g: _zero_bytes(_case(f, g, "zero_byte_file")),
             _all("refused:not a readable NIfTI")),
    # --- array shapes ----------------------------------------------------------------------------
    BadInput("shape", "2d_label", lambda f, g: _case(f, g, "2d_label", label=g.label[:, :, 10]),
             {"nifti": "refused:expected a 3D volume", "solf": "refused:expected a 3D volume",
              "datalist": "refused:expected a 3D volume"}),
    BadInput("shape", "4d_label_two_channels", lambda f, g: _case(f, g, "4d_label_two_channels",
             label=np.stack([g.label, g.label], axis=-1)), {"nifti": "refused:expected a 3D volume",
             "solf": "refused:expected a 3D volume", "datalist": "refused:expected a 3D volume"}),
    BadInput("shape", "label_XYZx1", lambda f, g: _case(f, g, "label_XYZx1", label=g.label[..., None]),
             _all("handled"), note="trailing singleton squeezed"),
    BadInput("shape", "label_XYZx1x1", lambda f, g: _case(f, g, "label_XYZx1x1", label=g.label[..., None, None]),
             _all("handled")),
    BadInput("shape", "image_channels_as_XYZx1_files", lambda f, g: _case(f, g, "image_channels_as_XYZx1_files",
             images=g.image[..., None]), {"solf": "handled", "datalist": "handled", "preprocess": "handled"}),
    # --- label values ----------------------------------------------------------------------------
    BadInput("label values", "integral_float32_labels", lambda f, g: _case(f, g, "integral_float32_labels",
             label=g.label.astype(np.float32)), _all("handled", ("solf", "labels", "datalist", "preprocess"))),
    BadInput("label values", "fractional_float_labels", lambda f, g: _case(f, g, "fractional_float_labels",
             label=_with(g.label, g.label == 5, 5.5, np.float32)),
             {"solf": "refused:fractional", "labels": "refused:non-integer", "datalist": "refused:non-integer"}),
    BadInput("label values", "scl_slope_0.5_on_uint8", lambda f, g: _case(f, g, "scl_slope_0.5_on_uint8",
             edit=lambda h: h.set_slope_inter(0.5, 0.0)),
             {"solf": "refused:fractional", "labels": "refused:non-integer", "datalist": "refused:non-integer"},
             note="scaled to 0.5 steps on reading"),
    BadInput("label values", "negative_labels", lambda f, g: _case(f, g, "negative_labels",
             label=_with(g.label, g.label == 5, -1, np.int16)),
             {"solf": "refused:negative", "labels": "refused:[-1]", "datalist": "refused:[-1]"}),
    BadInput("label values", "nan_in_float_labels", lambda f, g: _case(f, g, "nan_in_float_labels",
             label=_with(g.label, g.label == 5, np.nan, np.float32)),
             {"solf": "refused:NaN", "labels": "refused:NaN", "datalist": "refused:NaN", "preprocess": "refused:NaN"}),
    BadInput("label values", "id_80_outside_the_map", lambda f, g: _case(f, g, "id_80_outside_the_map",
             label=_with(g.label, g.label == 5, 80, np.uint8)),
             {"solf": "refused:outside the map", "labels": "refused:[80]", "datalist": "refused:[80]"}),
    BadInput("label values", "all_background", lambda f, g: _case(f, g, "all_background",
             label=np.zeros(SHAPE, np.uint8)),
             {"solf": "refused:no organ", "labels": "handled", "datalist": "handled", "preprocess": "handled"},
             note="SOLF: a failed segmentation is no training target"),
    BadInput("label values", "ignore_value_255", lambda f, g: _case(f, g, "ignore_value_255",
             label=_with(g.label, g.label == 5, IGNORE_LABEL, np.uint8)),
             {"solf": "handled", "labels": "handled", "datalist": "handled"}),
    # --- image intensities -----------------------------------------------------------------------
    BadInput("image intensities", "nan_voxel_in_one_channel", lambda f, g: _case(f, g, "nan_voxel_in_one_channel",
             images=_image_with(g, np.nan)), {"solf": "refused:NaN/Inf", "preprocess": "refused:NaN/Inf"},
             culprit="image"),
    BadInput("image intensities", "inf_voxel_in_one_channel", lambda f, g: _case(f, g, "inf_voxel_in_one_channel",
             images=_image_with(g, np.inf)), {"solf": "refused:NaN/Inf", "preprocess": "refused:NaN/Inf"},
             culprit="image"),
    BadInput("image intensities", "constant_zero_images", lambda f, g: _case(f, g, "constant_zero_images",
             images=np.zeros_like(g.image)), {"solf": "handled", "preprocess": "refused:no voxel above 0"},
             culprit="scan", note="intensity means 0, shapes as usual"),
    # --- channel counts ----------------------------------------------------------------------------
    BadInput("channels", "ukbob_entry_with_1_of_4_channels", lambda f, g: _case(f, g, "ukbob_entry_with_1_of_4_channels"),
             {"datalist": "refused:1 image channel(s), task 'ukbob' needs 4"}, culprit="case",
             extra={"images": slice(0, 1)}),
    BadInput("channels", "btcv_entry_with_2_channels", lambda f, g: _case(f, g, "btcv_entry_with_2_channels"),
             {"datalist": "refused:2 image channel(s), task 'btcv' needs 1"}, culprit="case",
             extra={"images": slice(0, 2), "task": BTCV, "label": np.zeros(SHAPE, np.uint8)}),
    BadInput("channels", "solf_scan_missing_one_channel_file", lambda f, g: _missing_channel(
        _case(f, g, "solf_scan_missing_one_channel_file")), {"solf": "refused:images not found"}, culprit="case"),
    BadInput("channels", "one_4d_file_with_4_channels", lambda f, g: _four_d_image(
        _case(f, g, "one_4d_file_with_4_channels"), g), {"datalist": "handled"}, extra={"images": slice(0, 1)}),
]


def _zero_bytes(scan: Scan) -> Scan:
    scan.label.write_bytes(b"")
    return scan


def _missing_channel(scan: Scan) -> Scan:
    scan.images[BAD_CHANNEL].unlink()
    return scan


def _four_d_image(scan: Scan, good: PhantomCase) -> Scan:
    _save(scan.images[0], np.moveaxis(good.image, 0, -1).astype(np.float32), good.affine)
    return scan


# ----------------------------------------------------------------------------------------------
# Consumers
# ----------------------------------------------------------------------------------------------

def _innermost(exc: BaseException) -> BaseException:
    """MONAI wraps transform errors ('applying transform ...'): the cause is what the user needs."""
    while exc.__cause__ is not None and "applying transform" in str(exc):
        exc = exc.__cause__
    return exc


def consume_nifti(scan: Scan, row: BadInput) -> str:
    data, affine = read_nifti(scan.label, ndim=3)
    return handled(f"read {data.shape} {data.dtype}, spacing {np.linalg.norm(affine[:3, :3], axis=0).round(2).tolist()}")


def consume_solf(scan: Scan, row: BadInput) -> str:
    image_dir = scan.images[0].parent
    task = make_task(scan.case_id, scan.label, image_dir, set(os.listdir(image_dir)), UKBOB_CHANNELS)
    record = measure_case(task)
    if record["status"] != "ok":
        raise SolfRefusal(record["reason"])
    return handled(f"{len(record['organs']['label'])} organs measured")


def consume_labels(scan: Scan, row: BadInput) -> str:
    data, _ = read_nifti(scan.label, ndim=3)
    UKBOB.check_label_values(data, str(scan.label))
    return handled("label values accepted")


def _entry(scan: Scan, row: BadInput) -> dict:
    images = [str(p) for p in scan.images[row.extra.get("images", slice(None))]]
    return {"image": images, "label": str(scan.label)}


def consume_datalist(scan: Scan, row: BadInput) -> str:
    task = row.extra.get("task", UKBOB)
    if "label" in row.extra:  # a label valid for that task
        _save(scan.label, row.extra["label"], nib.load(scan.images[0]).affine)
    problems = entry_problems(_entry(scan, row), task)
    if problems:
        raise ValueError(" | ".join(problems))
    return handled("no problem reported")


def consume_preprocess(scan: Scan, row: BadInput) -> str:
    out = PREPROCESS(_entry(scan, row))
    image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
    assert torch.isfinite(image).all() and torch.isfinite(label).all(), "NaN/Inf reached the model's input"
    return handled(f"finite tensors {tuple(image.shape)}")


CONSUMERS: dict[str, Callable[[Scan, BadInput], str]] = {
    "nifti": consume_nifti, "solf": consume_solf, "labels": consume_labels,
    "datalist": consume_datalist, "preprocess": consume_preprocess,
}


def _answer(consumer: str, scan: Scan, row: BadInput, tmp_path: Path) -> str:
    """What ``consumer`` made of ``scan``: its ``handled`` note or ``refused: <message>``."""
    try:
        return CONSUMERS[consumer](scan, row)
    except (NiftiError, SolfRefusal, ValueError, RuntimeError) as exc:
        return refused(_innermost(exc), strip=tmp_path)


@pytest.fixture(scope="module")
def good() -> PhantomCase:
    return ukbob_case(0, seed=7, shape=SHAPE)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_each_bad_input_is_refused_with_file_and_problem_or_handled(row, good, tmp_path):
    scan = row.make(tmp_path, good)
    culprits = {"label": [scan.label.name], "image": [scan.images[BAD_CHANNEL].name], "case": [scan.case_id],
                "scan": [p.name for p in (scan.label, *scan.images)]}[row.culprit]
    for consumer, expected in row.expect.items():
        answer = _answer(consumer, scan, row, tmp_path)
        note = f" ({row.note})" if row.note and answer.startswith("handled") else ""
        record_input(row.category, f"{row.name} -> {consumer}", answer + note)
        kind, _, words = expected.partition(":")
        assert answer.startswith(kind), f"{consumer}: expected {expected!r}, got {answer!r}"
        if kind == "refused":
            assert words in answer, f"{consumer}: the message does not say {words!r}: {answer!r}"
            assert any(c in answer for c in culprits), f"{consumer}: the message names none of {culprits}: {answer!r}"
            if row.culprit == "image":  # only the broken channel is blamed
                others = [p.name for i, p in enumerate(scan.images) if i != BAD_CHANNEL]
                assert not any(name in answer for name in others), answer


# ----------------------------------------------------------------------------------------------
# What "handled" means, checked
# ----------------------------------------------------------------------------------------------

FEATURES_IN_WORLD = ("voxel_count", "volume_mm3", "surface_mm2", "sphericity", "eccentricity", "centroid_x",
                     "centroid_y", "centroid_z", "n_components")


def test_a_flipped_axis_gives_the_same_world_features_and_keeps_its_affine(good, tmp_path):
    label, _, affine = _flipped(good)
    assert np.linalg.det(affine[:3, :3]) * np.linalg.det(good.affine[:3, :3]) < 0  # really a flip
    plain = measure_organs(validate_labels(good.label), good.affine)
    flipped = measure_organs(validate_labels(label), affine)
    assert plain["label"] == flipped["label"] and len(plain["label"]) > 5
    for name in FEATURES_IN_WORLD:
        np.testing.assert_allclose(flipped[name], plain[name], rtol=1e-9, atol=1e-6, err_msg=name)
    scan = _case(tmp_path, good, "flipped", label=label, affine=affine)
    out = tmp_path / "cleaned.nii.gz"
    assert clean_case(CleanTask("flipped", str(scan.label), str(out), rejected=(5,))) == ("flipped", None)
    cleaned = nib.load(out)
    np.testing.assert_allclose(cleaned.affine, affine)
    np.testing.assert_array_equal(np.asanyarray(cleaned.dataobj), np.where(label == 5, IGNORE_LABEL, label))


@pytest.mark.parametrize("suffix", [(1,), (1, 1)], ids=["XYZx1", "XYZx1x1"])
def test_trailing_singletons_are_squeezed_to_the_same_measurements(good, tmp_path, suffix):
    plain = measure_case(make_task("plain", _case(tmp_path, good, "plain").label, None, set(), ()))
    squeezed = _case(tmp_path, good, "squeezed", label=good.label.reshape(SHAPE + suffix))
    record = measure_case(make_task("squeezed", squeezed.label, None, set(), ()))
    assert record["status"] == "ok" and record["organs"] == plain["organs"] and record["shape"] == list(SHAPE)


def test_integral_float_labels_are_cleaned_into_the_same_integer_labels(good, tmp_path):
    scans = {name: _case(tmp_path, good, name, label=good.label.astype(dtype))
             for name, dtype in (("as_uint8", np.uint8), ("as_float32", np.float32))}
    outputs = {}
    for name, scan in scans.items():
        out = tmp_path / f"{name}_cleaned.nii.gz"
        assert clean_case(CleanTask(name, str(scan.label), str(out), rejected=(5,))) == (name, None)
        outputs[name] = nib.load(out)
    assert outputs["as_float32"].get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(outputs["as_float32"].dataobj), np.asanyarray(outputs["as_uint8"].dataobj))


def test_a_header_claiming_10_billion_voxels_is_refused_fast_without_allocating(good, tmp_path):
    scan = _raw_header(tmp_path, good, "huge", (2200, 2200, 2200))
    promised = _raw_header(tmp_path, good, "promised", (500, 500, 400), gz=True)
    for path, words in ((scan.label, "larger than"), (promised.label, "truncated")):
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(NiftiError, match=words) as error:
            load_nifti_header(path)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert path.name in str(error.value) and elapsed < 1.0 and peak < 5_000_000, (elapsed, peak)


def test_nan_in_an_image_never_reaches_a_tensor_through_zscore(good, tmp_path):
    """Without the check one NaN voxel turns the whole z-scored channel into NaN (documented here)."""
    from monai.transforms import NormalizeIntensity

    image = torch.as_tensor(_image_with(good, np.nan))
    spread = int(torch.isnan(NormalizeIntensity(nonzero=True, channel_wise=True)(image)[BAD_CHANNEL]).sum())
    assert spread > 1000  # one NaN voxel in, a NaN channel out
    scan = _case(tmp_path, good, "nan_image", images=_image_with(good, np.nan))
    with pytest.raises(Exception) as error:
        PREPROCESS({"image": [str(p) for p in scan.images], "label": str(scan.label)})
    assert isinstance(_innermost(error.value), NiftiError) and scan.images[BAD_CHANNEL].name in str(_innermost(error.value))


# ----------------------------------------------------------------------------------------------
# Paths with spaces, unicode and worse, end to end
# ----------------------------------------------------------------------------------------------

ODD_NAMES = ("case 01 with spaces", "cas_é_ü_日本", "new\nline", 'comma,and"quote', "glob_[x]*?")


def test_odd_file_names_work_end_to_end_through_solf_into_training(tmp_path):
    root = tmp_path / "dossier données ü"
    write_cohort("ukbob", root / "cohort", len(ODD_NAMES), shape=(32, 32, 40), seed=4)
    labels, images = root / "labels in", root / "images in"
    labels.mkdir()
    images.mkdir()
    for index, name in enumerate(ODD_NAMES):
        shutil.copy(root / "cohort" / "labelsTr" / f"ukbob_{index:04d}.nii.gz", labels / f"{name}.nii.gz")
        for channel in UKBOB_CHANNELS:
            shutil.copy(root / "cohort" / "imagesTr" / f"ukbob_{index:04d}_{channel}.nii.gz", images / f"{name}_{channel}.nii.gz")
    out = root / "sortie nettoyée"
    status = organ_filtering_entry(["--input_dir", str(labels), "--output_dir", str(out), "--image_dir", str(images),
                                    "--workers", "1", "--no_figure", "--log_level", "ERROR", "--min_population", "3",
                                    "--max_rejected_fraction", "1", "--val_fraction", "0.2"])
    assert status == 0
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(f"{n}.nii.gz" for n in ODD_NAMES)
    with open(out / "report" / "scans.csv", newline="", encoding="utf-8") as handle:
        scans = {row["case_id"]: row["status"] for row in csv.DictReader(handle)}
    assert scans == {name: "ok" for name in ODD_NAMES}
    record_input("paths", "spaces/unicode/newline/comma/quote/glob names -> SOLF",
                 handled(f"{len(ODD_NAMES)} scans measured, cleaned and listed under their own names"))

    dataset = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    data_dir = out / dataset["data_root"]
    entries = load_datalist(out / "dataset.json", data_dir) + load_datalist(out / "dataset.json", data_dir, "validation")
    assert sorted(Path(e["label"]).name for e in entries) == sorted(f"{n}.nii.gz" for n in ODD_NAMES)
    assert all(entry_problems(e, UKBOB) == [] for e in entries)
    sample = PREPROCESS(entries[0])
    assert tuple(sample["image"].shape[:1]) == (4,) and torch.isfinite(torch.as_tensor(sample["image"])).all()
    record_input("paths", "the same names via SOLF's dataset.json -> datalist + preprocess",
                 handled("loaded, checked and preprocessed"))


def test_a_file_name_that_is_not_utf8_stops_solf_before_any_work(tmp_path):
    labels = tmp_path / "labels"
    write_cohort("ukbob", tmp_path / "cohort", 3, shape=(24, 24, 28), seed=4)
    shutil.copytree(tmp_path / "cohort" / "labelsTr", labels)
    bad = os.fsencode(labels) + b"/scan_\xff.nii.gz"
    shutil.copy(labels / "ukbob_0000.nii.gz", bad)
    status = organ_filtering_entry(["--input_dir", str(labels), "--output_dir", str(tmp_path / "out"), "--workers", "1",
                                    "--no_figure", "--log_level", "ERROR", "--min_population", "3"])
    assert status == 2 and not (tmp_path / "out" / "features").exists()
    from swinbob.errors import ConfigError
    from swinbob.solf.cases import discover_cases
    with pytest.raises(ConfigError, match=r"scan_\\udcff\.nii\.gz.*not valid UTF-8") as error:
        discover_cases(labels)
    record_input("paths", "file name with invalid UTF-8 bytes -> SOLF", refused(error.value, strip=tmp_path)
                 + " (exit 2, before any work)")
