"""``make demo``'s own CT set: what the fine-tuning stage is given (the full demo is timed, not tested)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swinbob import demo
from swinbob.data.dataset_task import parse_labels
from swinbob.files import read_nifti
from swinbob.labels import BTCV_LABELS, ids_by_name
from swinbob.data.phantoms import btcv_case


def test_own_dataset_labels_exactly_the_chosen_organs_in_the_given_order(tmp_path):
    path = demo.own_dataset(tmp_path, ["spleen", "liver"], num_train=1, num_test=1, seed=3)
    content = json.loads(path.read_text())
    assert parse_labels(content, path)["label_map"] == {0: "background", 1: "spleen", 2: "liver"}
    assert (len(content["training"]), len(content["validation"])) == (1, 1)
    btcv = ids_by_name(BTCV_LABELS)
    for index, entry in enumerate(content["training"] + content["validation"]):
        label, affine = read_nifti(tmp_path / entry["label"])
        phantom = btcv_case(index, seed=3)
        assert np.allclose(affine, phantom.affine)
        np.testing.assert_array_equal(label == 1, phantom.label == btcv["spleen"])
        np.testing.assert_array_equal(label == 2, phantom.label == btcv["liver"])
        assert set(np.unique(label)) == {0, 1, 2}  # the kidneys and the rest are background
        assert (tmp_path / entry["image"]).is_file()


def test_demo_refuses_an_organ_twice(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--organs", "liver", "liver", "--out_dir", "/nonexistent/never_written"])
    assert exc.value.code == 2
    assert "--organs: each organ once" in capsys.readouterr().err
