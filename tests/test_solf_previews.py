"""report/previews/: one PNG per rejected organ that shows the organ, capped, never stale."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swinbob.files import write_nifti
from swinbob.labels import TOTALVIBE_LABELS, ids_by_name
from swinbob.data.phantoms import ukbob_case
from swinbob.solf.inject import swap
from swinbob.solf.cli import organ_filtering_entry
from swinbob.solf.previews import centre_index, preview_name

pytest.importorskip("matplotlib")
ID = ids_by_name(TOTALVIBE_LABELS)


def _run(root: Path, *extra: str) -> int:
    return organ_filtering_entry(["--input_dir", str(root / "labels"), "--output_dir", str(root / "out"), "--workers",
                                  "1", "--log_level", "WARNING", *extra])


def _pixels(path: Path, channel: int) -> int:
    """Pixels strongly of one colour (0 red: the organ, 2 blue: its left/right partner)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    others = [c for c in range(3) if c != channel]
    return int(np.count_nonzero((rgb[..., channel] > 150) & (rgb[..., others[0]] < 110) & (rgb[..., others[1]] < 110)))


def test_previews_show_each_rejected_organ_and_follow_the_cap(tmp_path):
    for index in range(4):
        case = ukbob_case(index, seed=2, shape=(48, 48, 60))
        label = swap(case.label, ID["kidney_left"], ID["kidney_right"]) if index == 0 else case.label
        write_nifti(tmp_path / "labels" / f"{case.case_id}.nii.gz", label, case.affine)
    assert _run(tmp_path) == 0
    folder = tmp_path / "out" / "report" / "previews"
    names = sorted(p.name for p in folder.iterdir())
    with open(tmp_path / "out" / "report" / "decisions.csv", newline="") as handle:
        rejected = sorted(preview_name(r["case_id"], int(r["label"]), r["name"]) for r in csv.DictReader(handle)
                          if r["decision"] == "rejected" or r["reasons"] == "swapped")  # the swap is repaired
    assert names == rejected and {"ukbob_0000__002_kidney_right.png", "ukbob_0000__003_kidney_left.png"} <= set(names)
    for name in names:
        assert _pixels(folder / name, 0) > 20  # the organ is drawn, in red
    for kidney in ("ukbob_0000__002_kidney_right.png", "ukbob_0000__003_kidney_left.png"):
        assert _pixels(folder / kidney, 2) > 20  # and its partner in blue: the swap shows
    # A cap of one keeps the first preview and removes the other; zero removes none but draws none.
    assert _run(tmp_path, "--max_previews", "1") == 0
    assert sorted(p.name for p in folder.iterdir()) == names[:1]
    assert _run(tmp_path, "--max_previews", "-1") == 2


def test_the_cut_goes_through_the_organ_even_when_its_centroid_is_outside_it():
    ring = np.zeros((9, 9, 3), bool)
    ring[1:8, 1:8, 1] = True
    ring[2:7, 2:7, 1] = False  # hollow: the centroid (4, 4, 1) is not part of the organ
    index = centre_index(ring)
    assert ring[tuple(index)]
