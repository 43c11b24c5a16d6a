"""Datalist checks before training: every problem is reported, by file, all at once."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from swinbob.data.loaders import DatalistError, check_datalist, load_splits, shard
from swinbob.data.phantoms import write_cohort
from swinbob.tasks import get_task
from swinbob.train.cli import main
from tiny import TINY_FLAGS

REPO = Path(__file__).resolve().parents[1]
BTCV = get_task("btcv")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_cohort("btcv", tmp_path_factory.mktemp("btcv_small"), 4, shape=(16, 16, 12)).parent


@pytest.fixture()
def cohort(pristine, tmp_path) -> Path:
    """A fresh, writable copy of a small, valid BTCV cohort."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _entries(root: Path) -> list[dict]:
    train, val = load_splits(root / "dataset.json", root)
    return train + val


def _rewrite(path: Path, data=None, affine=None) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def test_a_valid_cohort_has_no_problems(cohort):
    assert check_datalist(_entries(cohort), BTCV) == []


def test_missing_file_is_reported(cohort):
    entry = _entries(cohort)[0]
    Path(entry["image"]).unlink()
    problems = check_datalist(_entries(cohort), BTCV)
    assert len(problems) == 1 and entry["image"] in problems[0] and "not found" in problems[0]


def test_unreadable_file_is_reported(cohort):
    entry = _entries(cohort)[1]
    Path(entry["image"]).write_bytes(b"this is not a NIfTI file")
    [problem] = check_datalist(_entries(cohort), BTCV)
    assert entry["image"] in problem and "not a readable NIfTI" in problem


def test_truncated_label_is_reported(cohort):
    label = Path(_entries(cohort)[0]["label"])
    label.write_bytes(label.read_bytes()[:-40])
    [problem] = check_datalist(_entries(cohort), BTCV)
    assert str(label) in problem and "truncated" in problem


def test_grid_mismatches_are_reported(cohort):
    first, second = _entries(cohort)[:2]
    _rewrite(Path(first["label"]), data=np.zeros((16, 16, 10), np.uint8))
    shifted = nib.load(second["label"]).affine.copy()
    shifted[0, 3] += 1.5
    _rewrite(Path(second["label"]), affine=shifted)
    problems = check_datalist(_entries(cohort), BTCV)
    assert any(first["label"] in p and "grid shape" in p for p in problems)
    assert any(second["label"] in p and "affine differs" in p for p in problems)


def test_unrepresentable_label_value_is_reported(cohort):
    label = Path(_entries(cohort)[2]["label"])
    data = np.asanyarray(nib.load(str(label)).dataobj).copy()
    data[0, 0, 0] = 20
    _rewrite(label, data=data)
    [problem] = check_datalist(_entries(cohort), BTCV)
    assert str(label) in problem and "[20]" in problem


def test_wrong_channel_count_is_reported(cohort):
    problems = check_datalist(_entries(cohort), get_task("ukbob"))  # BTCV labels are valid UKBOB IDs
    assert len(problems) == 4 and all("1 image channel(s)" in p and "needs 4" in p for p in problems)


def test_path_escaping_data_dir_is_refused(cohort):
    listing = json.loads((cohort / "dataset.json").read_text())
    listing["training"][0]["image"] = "../../outside.nii.gz"
    (cohort / "dataset.json").write_text(json.dumps(listing))
    with pytest.raises(DatalistError, match="escapes the directory"):
        load_splits(cohort / "dataset.json", cohort)


def test_all_problems_are_listed_at_once(cohort):
    entries = _entries(cohort)
    Path(entries[0]["image"]).unlink()
    Path(entries[1]["label"]).write_bytes(b"garbage")
    assert len(check_datalist(entries, BTCV)) == 2


def test_shards_cover_every_case_exactly_once():
    cases = list(range(7))
    shards = [shard(cases, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == cases


def test_training_cli_stops_on_a_bad_datalist_without_traceback(cohort, tmp_path):
    entries = _entries(cohort)
    Path(entries[0]["image"]).unlink()
    Path(entries[1]["label"]).write_bytes(b"garbage")
    run = subprocess.run(
        [sys.executable, "main.py", f"--json_list={cohort / 'dataset.json'}", f"--data_dir={cohort}",
         f"--logdir={tmp_path / 'run'}", *TINY_FLAGS, "--max_epochs=1"],
        cwd=REPO / "BTCV", capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "2 problem(s)" in run.stderr and entries[0]["image"] in run.stderr and entries[1]["label"] in run.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_in_process_cli_returns_an_error_code_for_a_missing_datalist(tmp_path):
    assert main([f"--json_list={tmp_path / 'nope.json'}", f"--data_dir={tmp_path}", "--roi_x=32", "--roi_y=32", "--roi_z=64"], default_task="btcv") == 2
