"""SOLF outputs: cleaned label files keep the input's grid, header and integer type; the figure
is optional."""

from __future__ import annotations

import csv
import importlib.util
import logging

import nibabel as nib
import numpy as np
import pytest

from swinbob.labels import IGNORE_LABEL
from swinbob.solf import figure
from swinbob.solf.decide import decide
from swinbob.solf.features import measure_organs
from swinbob.solf.outputs import CleanTask, clean_case, clean_label
from swinbob.solf.rules import default_rules
from swinbob.solf.store import build_table, write_csv_columns


def _label() -> np.ndarray:
    label = np.zeros((12, 10, 8), np.uint8)
    label[1:5, 1:5, 1:5] = 5
    label[8, 8, 6] = 5  # a fragment of the liver
    label[6:9, 1:4, 1:4] = 2
    return label


@pytest.mark.parametrize("stored, written", [(np.int16, np.int16), (np.uint8, np.uint8), (np.float32, np.uint8),
                                             (np.int8, np.uint8)])
def test_cleaned_file_keeps_grid_header_and_an_integer_type(tmp_path, stored, written):
    affine = np.array([[0, 0, -3.0, 50], [1.5, 0, 0, -20], [0, 2.0, 0, 10], [0, 0, 0, 1]])
    image = nib.Nifti1Image(_label().astype(stored), affine)
    image.header["descrip"] = b"TotalVibeSegmentator"
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    source = tmp_path / "case.nii.gz"
    nib.save(image, source)
    task = CleanTask("case", str(source), str(tmp_path / "out" / "case.nii.gz"), rejected=(2,), keep_components={5: 1})
    assert clean_case(task) == ("case", None)
    out = nib.load(tmp_path / "out" / "case.nii.gz")
    data = np.asanyarray(out.dataobj)
    assert out.get_data_dtype() == np.dtype(written) and data.dtype.kind in "iu"
    np.testing.assert_allclose(out.affine, affine)
    assert out.header["descrip"] == image.header["descrip"]
    assert (out.header["qform_code"], out.header["sform_code"]) == (1, 2)
    assert data[8, 8, 6] == IGNORE_LABEL and np.all(data[6:9, 1:4, 1:4] == IGNORE_LABEL)
    assert np.all(data[1:5, 1:5, 1:5] == 5) and np.count_nonzero(data == IGNORE_LABEL) == 28


def test_cleaning_keeps_the_n_largest_components():
    label = np.zeros((20, 4, 4), np.uint8)
    for start, length in ((0, 3), (5, 5), (12, 2), (16, 4)):
        label[start:start + length, 1, 1] = 64
    cleaned = clean_label(label, (), {64: 2})
    assert np.count_nonzero(cleaned == 64) == 9 and np.count_nonzero(cleaned == IGNORE_LABEL) == 5


def _decided():
    rng = np.random.default_rng(0)
    records = []
    for case in range(5):
        label = _label()
        label[1:5 + rng.integers(0, 2), 1:5, 1:5] = 5
        records.append({"case_id": f"c{case}", "status": "ok", "fingerprint": "-", "organs": measure_organs(label, np.eye(4))})
    table = build_table(records)
    rules = default_rules()
    return table, decide(table, rules), rules


def test_figure_is_written_as_png(tmp_path):
    table, decisions, rules = _decided()
    assert figure.plot_report(tmp_path / "report.png", table, decisions, rules)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_is_skipped_with_a_warning_without_matplotlib(tmp_path, monkeypatch, caplog):
    table, decisions, rules = _decided()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with caplog.at_level(logging.WARNING):
        assert not figure.plot_report(tmp_path / "report.png", table, decisions, rules)
    assert "matplotlib is not installed" in caplog.text and not (tmp_path / "report.png").exists()


@pytest.mark.parametrize("with_pyarrow", [True, False])
def test_report_tables_read_back_exactly_with_and_without_pyarrow(tmp_path, monkeypatch, with_pyarrow):
    if with_pyarrow and importlib.util.find_spec("pyarrow") is None:
        pytest.skip("pyarrow is not installed")
    if not with_pyarrow:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    values = np.array([1.0, 1e-5, 1 / 3, 2.5e20, 12345678.0])
    columns = {"case_id": ["a", "b,c", 'd"e', "f", "g"], "label": np.arange(5), "x": values,
               "z": np.ma.masked_invalid([0.5, np.nan, -1.25, np.nan, 3.0])}
    path = tmp_path / "table.csv"
    write_csv_columns(path, columns)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in rows] == columns["case_id"] and [r["label"] for r in rows] == list("01234")
    assert [float(r["x"]) for r in rows] == values.tolist() and rows[4]["x"] == "12345678"
    assert [r["z"] for r in rows] == ["0.5", "", "-1.25", "", "3"]
