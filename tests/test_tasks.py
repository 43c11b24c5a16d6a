"""Task definitions: the data contract of each benchmark."""

import numpy as np
import pytest

from swinbob.labels import IGNORE_LABEL, TOTALVIBE_LABELS
from swinbob.tasks import LabelValueError, get_task


def test_ukbob_keeps_totalvibe_ids_so_it_has_73_outputs():
    task = get_task("ukbob")
    assert task.out_channels == 73 and task.in_channels == 4
    assert task.class_names[72] == "bone_other" and task.class_names[5] == "liver"
    assert 0 not in task.scored_classes and 20 not in task.scored_classes  # background and "unused"
    assert len(TOTALVIBE_LABELS) == 73
    assert task.intensity.kind == "zscore_nonzero"


def test_ukbob_accepts_one_channel():
    assert get_task("ukbob").with_channels(1).in_channels == 1
    with pytest.raises(ValueError, match="input channel"):
        get_task("btcv").with_channels(4)


def test_btcv_recipe_defaults():
    task = get_task("btcv")
    assert (task.in_channels, task.out_channels) == (1, 14)
    assert task.spacing == (1.5, 1.5, 2.0)
    assert (task.intensity.a_min, task.intensity.a_max, task.intensity.b_min, task.intensity.b_max) == (-175, 250, 0, 1)
    assert task.class_names[6] == "liver" and len(task.scored_classes) == 13


@pytest.mark.parametrize("et_label", [3, 4])
def test_brats_regions(et_label):
    task = get_task("brats", et_label=et_label)
    assert task.mode == "regions" and task.out_channels == 3 and task.in_channels == 4
    assert task.regions == {"TC": (1, et_label), "WT": (1, 2, et_label), "ET": (et_label,)}
    task.check_label_values(np.array([0, 1, 2, et_label]), "seg.nii.gz")


def test_unrepresentable_label_value_names_file_and_value():
    with pytest.raises(LabelValueError, match=r"case_7\.nii\.gz.*\[73\]"):
        get_task("ukbob").check_label_values(np.array([0, 5, 73]), "case_7.nii.gz")
    with pytest.raises(LabelValueError, match=r"seg\.nii\.gz.*\[4\]"):
        get_task("brats").check_label_values(np.array([0, 4]), "seg.nii.gz")
    with pytest.raises(LabelValueError, match="non-integer value 1.5"):
        get_task("btcv").check_label_values(np.array([0.0, 1.5]), "lab.nii.gz")
    with pytest.raises(LabelValueError, match=r"\[-1\]"):
        get_task("btcv").check_label_values(np.array([-1, 0]), "neg.nii.gz")


def test_ignore_value_is_allowed():
    get_task("btcv").check_label_values(np.array([0, 13, IGNORE_LABEL]), "cleaned.nii.gz")


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'kits'"):
        get_task("kits")
