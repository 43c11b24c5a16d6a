"""``--task auto``: train on one's own labelled set from its dataset.json, evaluate from the checkpoint alone.

A tiny 3-class MRI set (nnU-Net v2 dataset.json, custom label names) and a CT set (Decathlon
dataset.json) are trained with ``--task auto`` only and evaluated with ``test_etta.py`` given the
checkpoint and the data: the custom names must reach metrics.csv, summary.json and the GIF legend.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import torch

from swinbob.data.dataset_task import DatasetJsonError, parse_labels, task_from_dataset
from swinbob.infer.cli import main as evaluate
from swinbob.infer.model_loading import stored_task
from swinbob.checkpoint import load_checkpoint
from swinbob.train.cli import main as train
from swinbob.viz import LEGEND_WIDTH, _legend

from custom_data import MRI_NAMES, write_dataset
from tiny import TINY_FLAGS, tiny_config

TINY = [*TINY_FLAGS, "--workers=0"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gif_legend_matches(gif: Path, names: dict[int, str]) -> float:
    """Share of the legend's text pixels (white) in the GIF's first frame that the legend drawn with ``names`` has too."""
    frame = iio.imread(gif, index=0)[..., :3]
    legend = frame[:, -LEGEND_WIDTH:]
    expected = _legend(legend.shape[0], [1, 2, 3], names)  # every class is in the label
    got_text, want_text = legend.min(-1) > 200, expected.min(-1) > 200
    return float((got_text & want_text).sum() / max(want_text.sum(), 1))


@pytest.mark.parametrize("modality", ["MRI", "CT"])
def test_auto_task_trains_and_evaluates_from_the_checkpoint_alone(tmp_path, modality):
    datalist = write_dataset(tmp_path / "data", modality, nnunet_style=modality == "MRI")
    run = tmp_path / "run"
    status = train(["--task=auto", f"--json_list={datalist}", f"--data_dir={datalist.parent}", f"--logdir={run}",
                    "--max_epochs=1", "--max_steps_per_epoch=2", "--num_samples=1", "--val_every=1", "--save_checkpoint",
                    *TINY])
    assert status == 0
    task = stored_task(load_checkpoint(run / "model_final.pt")["config"])
    names = MRI_NAMES if modality == "MRI" else {1: "liver", 2: "spleen", 3: "lesion"}
    assert task.label_map == {0: "background", **names} and task.channel_names == (modality,)
    assert task.spacing == (2.0, 2.0, 2.5)  # median of the training images
    if modality == "CT":  # nnU-Net: clip to the foreground's 0.5/99.5 percentiles, z-score with its mean/std
        assert task.intensity.kind == "window" and -60 < task.intensity.a_min < 40 < 90 < task.intensity.a_max < 160
        assert task.intensity.b_min < 0 < task.intensity.b_max
    else:
        assert task.intensity.kind == "zscore_foreground"
    out = tmp_path / "eval"
    status = evaluate([f"--pretrained_dir={run}", "--pretrained_model_name=model_final.pt", f"--json_list={datalist}",
                       f"--data_dir={datalist.parent}", f"--output_dir={out}", "--generate_gifs", "--gif_frames=2",
                       "--etta_steps=1", "--workers=0"], default_task="btcv")
    assert status == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert {r.split(",")[2] for r in rows[1:]} == set(names.values())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["classes"]) == set(names.values()) and summary["task"] == task.name
    assert set(summary["metrics"]["etta"]["dice"]["per_class"]) == set(names.values())
    assert (out / "predictions" / "case2_0000.nii.gz").is_file()  # written by default
    gif = out / "gifs" / "case2_0000.gif"
    from swinbob.labels import TOTALVIBE_LABELS
    assert gif_legend_matches(gif, {0: "background", **names}) > 0.95
    assert gif_legend_matches(gif, TOTALVIBE_LABELS) < 0.9  # the check can fail: other names, other pixels


@pytest.fixture(scope="module")
def mri_run(tmp_path_factory, one_torch_thread):
    """A tiny model trained for one step on the MRI set: (datalist, run folder)."""
    root = tmp_path_factory.mktemp("mri")
    datalist = write_dataset(root / "data", "MRI", nnunet_style=True)
    assert train(["--task=auto", f"--json_list={datalist}", f"--data_dir={datalist.parent}", f"--logdir={root / 'run'}",
                  "--max_epochs=1", "--max_steps_per_epoch=1", "--num_samples=1", "--save_checkpoint", *TINY]) == 0
    return datalist, root / "run"


def test_evaluation_refuses_a_dataset_with_other_labels_naming_both(tmp_path, caplog, mri_run):
    datalist, run = mri_run
    other = json.loads(datalist.read_text())
    other["labels"] = {"background": 0, "tumour": 1, "oedema": 2, "necrosis": 3}
    (tmp_path / "other.json").write_text(json.dumps(other))
    status = evaluate([f"--pretrained_dir={run}", "--pretrained_model_name=model_final.pt",
                       f"--json_list={tmp_path / 'other.json'}", f"--data_dir={datalist.parent}",
                       f"--output_dir={tmp_path / 'eval'}", "--no_etta", "--workers=0"], default_task="btcv")
    assert status == 2
    message = caplog.text
    assert "model_final.pt" in message and "other.json" in message and "tumour" in message and "cortex_gm" in message


def test_nnunet_regions_and_ignore_label_parse_into_a_region_task(tmp_path):
    content = {"labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing": 3, "ignore": 4},
               "regions_class_order": [1, 2, 3], "channel_names": {"0": "T1", "1": "FLAIR"}, "name": "Dataset042_Brain"}
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    task = task_from_dataset(tmp_path / "dataset.json", spacing=(1, 1, 1))
    assert task.mode == "regions" and task.regions == {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing": (3,)}
    assert task.region_labels == (1, 2, 3) and task.ignore_value == 4 and task.out_channels == 3
    assert task.in_channels == 2 and task.name == "dataset042_brain" and 4 in task.valid_label_values
    with pytest.raises(DatasetJsonError, match="no background"):
        parse_labels({"labels": {"1": "liver"}}, "x.json")
    with pytest.raises(DatasetJsonError, match="used twice"):
        parse_labels({"labels": {"background": 0, "a": 1, "b": 1}}, "x.json")


@pytest.mark.parametrize("value, shown", [
    ("x" * 78, "'" + "x" * 78 + "'"),  # a repr of 80 characters is shown whole
    ("x" * 79, "'" + "x" * 76 + "..."),  # longer ones are cut to 77 characters and "..."
])
def test_label_value_errors_show_the_value_cut_to_80_characters(value, shown):
    with pytest.raises(DatasetJsonError) as caught:
        parse_labels({"labels": {"background": 0, "liver": value}}, "x.json")
    assert str(caught.value) == f"x.json: 'labels': 'liver' {shown} is not an integer label value"


def test_a_decathlon_name_given_to_two_labels_is_refused_naming_both():
    with pytest.raises(DatasetJsonError) as caught:
        parse_labels({"labels": {"0": "background", "1": "liver", "2": "liver"}}, "x.json")
    assert str(caught.value) == "x.json: 'labels': labels 1 and 2 are both named 'liver'"


def test_ordered_regions_write_the_last_region_on_top():
    from swinbob.infer.outputs import ordered_regions_to_labels
    regions = torch.zeros(3, 4, 1, 1, dtype=torch.bool)
    regions[0, :3], regions[1, 1:3], regions[2, 2] = True, True, True
    assert ordered_regions_to_labels(regions, (1, 2, 3)).flatten().tolist() == [1, 2, 3, 0]


def _head(channels: int, features: int = 2) -> torch.nn.Module:
    """A stem and Swin-UNETR's output head (``out.conv.conv``): the head rows are loaded on their own."""
    conv = torch.nn.Conv3d(features, channels, 1)
    return torch.nn.ModuleDict({"stem": torch.nn.Conv3d(1, features, 1),
                                "out": torch.nn.ModuleDict({"conv": torch.nn.ModuleDict({"conv": conv})})})


def test_head_rows_match_names_whatever_their_word_order_case_and_hyphens():
    from swinbob.train.state import HEAD_KEYS, init_head_rows

    torch.manual_seed(0)
    state = _head(4).state_dict()
    source = ["background", "right_kidney", "unused", "Left-Lung", "liver"]  # 4 rows: "liver" names none
    target = _head(6)
    fresh = {key: value.clone() for key, value in target.state_dict().items()}
    rows = init_head_rows(target, state, source, ["background", "liver", "Kidney_Right", "lung_left", "unused", "lesion"])
    assert rows == [("background", 0, 0), ("Kidney_Right", 1, 2), ("lung_left", 3, 3)]
    for key in HEAD_KEYS:
        copied = target.state_dict()[key]
        assert all(torch.equal(copied[dst], state[key][src]) for _, src, dst in rows)
        assert all(torch.equal(copied[dst], fresh[key][dst]) for dst in (1, 4, 5))  # no row of their own: fresh


@pytest.mark.parametrize("channels, features, head_in_state, with_names", [
    (6, 2, True, False),  # no class names stored with the source
    (6, 2, False, True),  # a checkpoint without the head
    (4, 2, True, True),  # the same shape: already loaded
    (6, 3, True, True),  # another feature size: nothing to copy
])
def test_head_rows_are_left_alone_without_names_a_head_or_a_new_shape(channels, features, head_in_state, with_names):
    from swinbob.train.state import init_head_rows

    names = ["background", "liver", "spleen", "kidney", "lesion", "cyst"]
    state = _head(4).state_dict() if head_in_state else {}
    model = _head(channels, features)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert init_head_rows(model, state, names[:4] if with_names else None, names[:channels]) == []
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


def test_fine_tuning_swinbob_starts_matching_head_rows_from_its_own_and_logs_them(tmp_path, caplog):
    from swinbob.model import build_model
    from swinbob.train.state import init_head_rows, source_class_names

    torch.manual_seed(0)
    swinbob = build_model(tiny_config(1, 73))
    (tmp_path / "pretrained").mkdir()
    checkpoint = {"state_dict": swinbob.state_dict(), "epoch": 3, "best_acc": 0.5}  # upstream format, no names
    torch.save(checkpoint, tmp_path / "pretrained" / "swinbob.pt")
    names = source_class_names(checkpoint)
    assert names[5] == "liver" and names[1] == "spleen"
    target = build_model(tiny_config(1, 4))
    rows = init_head_rows(target, checkpoint["state_dict"], names, ["background", "liver", "spleen", "lesion"])
    assert rows == [("background", 0, 0), ("liver", 5, 1), ("spleen", 1, 2)]
    head = target.state_dict()["out.conv.conv.weight"]
    assert torch.equal(head[1], swinbob.state_dict()["out.conv.conv.weight"][5])
    assert not torch.equal(head[3], swinbob.state_dict()["out.conv.conv.weight"][3])  # lesion: fresh
    # The same through the training command, with the log saying which rows:
    datalist = write_dataset(tmp_path / "data", "CT", nnunet_style=False)
    caplog.set_level("INFO", logger="swinbob")
    assert train(["--task=auto", f"--json_list={datalist}", f"--data_dir={datalist.parent}", f"--logdir={tmp_path / 'run'}",
                  f"--pretrained_dir={tmp_path / 'pretrained'}", "--pretrained_model_name=swinbob.pt",
                  "--max_epochs=1", "--max_steps_per_epoch=1", "--num_samples=1", *TINY]) == 0
    assert "loaded " in caplog.text and "head rows initialised from" in caplog.text
    assert "liver (5 -> 1), spleen (1 -> 2)" in caplog.text


def test_swinbob_predict_writes_each_input_geometry_probabilities_and_statistics(tmp_path, mri_run):
    from swinbob.commands import main as swinbob_command

    datalist, run = mri_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = nib.load(datalist.parent / "imagesTr" / "case0_0000.nii.gz")
    oblique = np.array([[0, -2.0, 0, 40], [1.5, 0, 0, -20], [0, 0, 2.5, 5], [0, 0, 0, 1]])  # permuted, flipped, anisotropic
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[:, :30], oblique), inputs / "scan_a.nii.gz")
    nib.save(source, inputs / "scan_b.nii.gz")
    out = tmp_path / "out"
    assert swinbob_command(["predict", "-i", str(inputs), "-o", str(out), "-m", str(run / "model_final.pt"),
                            "--save_probabilities", "--statistics"]) == 0
    statistics = json.loads((out / "statistics.json").read_text())
    for name in ("scan_a", "scan_b"):
        image = nib.load(inputs / f"{name}.nii.gz")
        pred = nib.load(out / "predictions" / f"{name}.nii.gz")
        assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
        probs = nib.load(out / "probabilities" / f"{name}.nii.gz")
        assert probs.shape == (*image.shape, 4) and np.allclose(probs.affine, image.affine)
        labels = np.asarray(pred.dataobj)
        probabilities = np.asarray(probs.dataobj)
        assert np.allclose(probabilities.sum(-1), 1.0, atol=1e-4)  # softmax, also outside the foreground crop
        assert np.array_equal(probabilities.argmax(-1), labels)  # the labels are the probabilities' argmax
        voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000
        for label, structure in MRI_NAMES.items():
            entry = statistics[name][structure]
            assert entry["voxels"] == int((labels == label).sum())
            assert entry["volume_ml"] == pytest.approx(entry["voxels"] * voxel_ml, rel=1e-9)
            if entry["voxels"]:
                assert entry["mean_intensity"] == pytest.approx(float(np.asarray(image.dataobj)[labels == label].mean()), rel=1e-5)
                assert entry["components"] >= 1 and len(entry["bbox"]) == 3


def test_structure_statistics_count_components_and_boxes():
    from swinbob.infer.statistics import structure_statistics

    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:3, 1:3, 1:3], labels[6:9, 6:8, 5:6] = 1, 1
    image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    stats = structure_statistics(labels, image, np.diag([2.0, 1.0, 0.5, 1.0]), {"a": (1,), "b": (2,)})
    assert stats["a"]["voxels"] == 14 and stats["a"]["volume_ml"] == pytest.approx(14 * 1e-3)
    assert stats["a"]["components"] == 2 and stats["a"]["bbox"] == [[1, 8], [1, 7], [1, 5]]
    assert stats["b"] == {"volume_ml": 0.0, "voxels": 0, "mean_intensity": None, "components": 0, "bbox": None}


@pytest.mark.parametrize("script", ["UKBOB/main.py", "BTCV/test_etta.py"])
def test_help_shows_the_presets_actual_values(script, capsys):
    from swinbob.infer.cli import build_parser as eval_parser
    from swinbob.train.cli import build_parser as train_parser

    parser = train_parser("ukbob") if script.endswith("main.py") else eval_parser("btcv")
    text = parser.format_help()
    assert "ukbob: 4 channel(s)" in text and "spacing 2/2/3 mm" in text
    assert "btcv: 1 channel(s) CT, 14 outputs" in text and "spacing 1.5/1.5/2 mm" in text and "-175..250" in text
    assert "brats:" in text and "ROI 128x128x128" in text and "auto:" in text and "exit codes:" in text


def test_task_round_trips_through_its_plain_dict_and_json():
    from swinbob.tasks import Task, get_task

    for task in (get_task("ukbob"), get_task("brats", et_label=4)):
        assert Task.from_dict(task.to_dict()) == task
        assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task  # config.json: string label IDs


def test_a_datasets_own_ignore_label_is_neither_trained_on_nor_scored(tmp_path):
    import dataclasses

    from swinbob.data.transforms import DataConfig, eval_transforms
    from swinbob.infer.evaluate import _read_label
    from swinbob.data.inputs import Case
    from swinbob.labels import IGNORE_LABEL
    from swinbob.tasks import get_task

    task = dataclasses.replace(get_task("btcv"), label_map={0: "background", 1: "liver"}, ignore_value=4)
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:4], label[5:7] = 1, 4
    image = np.full(label.shape, 100.0, np.float32)
    for name, array in (("label", label), ("image", image)):
        nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / f"{name}.nii.gz")
    scored, _ = _read_label(Case("c", (str(tmp_path / "image.nii.gz"),), str(tmp_path / "label.nii.gz")), task, label.shape)
    assert set(np.unique(scored).tolist()) == {0, 1, IGNORE_LABEL}
    data = DataConfig.from_task(task, spacing=(1.0, 1.0, 1.0), roi=(32, 32, 64))
    loaded = eval_transforms(task, data)({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})
    assert set(torch.unique(loaded["label"]).tolist()) == {0.0, 1.0, float(IGNORE_LABEL)}  # the loss masks 255


# A dataset.json a user wrote by hand: each refusal as its exact message (the file and the field),
# and the defaults a --task auto run trains with

def _dataset(folder: Path, **fields) -> Path:
    content = {"labels": {"0": "background", "1": "liver"}, "channel_names": {"0": "MRI"}, **fields}
    path = folder / "dataset.json"
    path.write_text(json.dumps(content))
    return path


SPACING = (1.0, 1.0, 1.0)
REGIONS = {"background": 0, "whole": [1, 2], "core": [2]}


@pytest.mark.parametrize("fields, message", [
    ({"labels": {"0": "background", "1": "  "}}, "'labels': label 1 has the name '  '; names are non-empty text"),
    ({"labels": {"0": "background", "1": "x" * 1025}}, "'labels': the name of label 1 has 1025 characters (at most 1024)"),
    ({"labels": {"0": "background", "255": "rim"}},
     "'labels': 255 ('rim') is the ignore value of cleaned labels and cannot be a class; renumber it"),
    ({"labels": {"0": "background", "40": "last"}},
     "'labels': the largest label 40 needs 41 output channels, more than 40 (--max_channels)"),
    ({"channel_names": None}, "needs 'channel_names' or 'modality', e.g. {\"0\": \"MRI\"}"),
    ({"channel_names": ["T1"]}, "needs 'channel_names' or 'modality', e.g. {\"0\": \"MRI\"}"),
    ({"channel_names": {"first": "T1"}}, "'channel_names'/'modality' keys must be channel indices 0, 1, ..."),
    ({"labels": ["liver"]}, "'labels' must be a non-empty object, e.g. {\"0\": \"background\", \"1\": \"liver\"}"),
    ({"labels": {str(i): f"c{i}" for i in range(41)}}, "'labels' has 41 entries, more than 40 (--max_channels)"),
    ({"labels": {"0": "background", "1": 5}}, "'labels': label 1 has the name 5; Decathlon names are text"),
    ({"labels": {"0": "background", "99999999999999999999": "huge"}},
     "'labels': 'ID' '99999999999999999999' is not a non-negative integer"),  # beyond float precision
    ({"labels": {"background": 0, "liver": True}}, "'labels': 'liver' True is not an integer label value"),
    ({"labels": {"background": 0, "liver": "x"}}, "'labels': 'liver' 'x' is not an integer label value"),
    ({"labels": {"background": 0, "liver": 1.5}}, "'labels': 'liver' 1.5 is not a non-negative integer"),
    ({"labels": {"background": 0, "liver": -1}}, "'labels': 'liver' -1 is not a non-negative integer"),
    ({"labels": {"background": 0, "liver": 1, "ignore": "x"}}, "'labels': 'ignore' 'x' is not an integer label value"),
    ({"labels": {"background": 0, "liver": 1, "ignore": 1}}, "'labels': the ignore value 1 is also the label 'liver'"),
    ({"labels": {"background": 0, "whole": [1, "x"]}}, "'labels': 'whole' 'x' is not an integer label value"),
    ({"labels": REGIONS, "regions_class_order": "1,2"},
     "'regions_class_order' must be a list of labels, one per region, got '1,2'"),
    ({"labels": REGIONS, "regions_class_order": [1, "x"]}, "'regions_class_order': 'entry' 'x' is not an integer label value"),
])
def test_a_dataset_json_that_cannot_define_a_task_is_refused_naming_file_field_and_value(tmp_path, monkeypatch, fields, message):
    monkeypatch.setenv("SWINBOB_MAX_CHANNELS", "40")
    path = _dataset(tmp_path, **fields)
    with pytest.raises(DatasetJsonError) as caught:
        task_from_dataset(path, spacing=SPACING)
    assert str(caught.value) == f"{path}: {message}"


def test_names_of_1024_characters_label_39_of_40_channels_and_eleven_channels_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("SWINBOB_MAX_CHANNELS", "40")
    channels = {str(i): f"c{i}" for i in range(11)}  # in numeric order, not text order (0, 1, 10, 2, ...)
    task = task_from_dataset(_dataset(tmp_path, labels={"0": "background", "39": "x" * 1024}, channel_names=channels),
                             spacing=SPACING)
    assert max(task.label_map) == 39 and task.channel_names == tuple(f"c{i}" for i in range(11))
    full = task_from_dataset(_dataset(tmp_path, labels={str(i): f"c{i}" for i in range(40)}), spacing=SPACING)
    assert len(full.label_map) == 40  # exactly --max_channels entries


def test_dataset_json_parts_parsed_on_their_own_name_dataset_json():
    from swinbob.data.dataset_task import parse_channels
    with pytest.raises(DatasetJsonError) as caught:
        parse_channels({"labels": {"0": "background"}})
    assert str(caught.value) == "dataset.json: needs 'channel_names' or 'modality', e.g. {\"0\": \"MRI\"}"
    with pytest.raises(DatasetJsonError) as caught:
        parse_labels({"labels": {}})
    assert str(caught.value).startswith("dataset.json: 'labels' must be a non-empty object")


def test_an_unreadable_dataset_json_is_refused_naming_it(tmp_path, monkeypatch):
    missing = tmp_path / "dataset.json"
    with pytest.raises(DatasetJsonError) as caught:
        task_from_dataset(missing, spacing=SPACING)
    assert str(caught.value) == f"{missing}: cannot read dataset.json ([Errno 2] No such file or directory: '{missing}')"
    with pytest.raises(DatasetJsonError) as caught:
        task_from_dataset(tmp_path, spacing=SPACING)  # a folder
    assert str(caught.value) == f"{tmp_path}: cannot read dataset.json (not a regular file (a dataset.json must be one))"
    monkeypatch.setenv("SWINBOB_MAX_TABLE_MB", "1")
    missing.write_text(json.dumps({"labels": {"0": "background"}, "padding": "x" * 2**20}))
    with pytest.raises(DatasetJsonError) as caught:
        task_from_dataset(missing, spacing=SPACING)
    assert str(caught.value) == f"{missing}: cannot read dataset.json (dataset.json larger than 1 MiB (--max_table_mb))"
    missing.write_text("[1, 2]")
    with pytest.raises(DatasetJsonError) as caught:
        task_from_dataset(missing, spacing=SPACING)
    assert str(caught.value) == f"{missing}: dataset.json must hold a JSON object"


def test_an_auto_task_has_the_documented_training_defaults_and_a_given_ct_window(tmp_path):
    window = {"a_min": -100.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0}
    task = task_from_dataset(_dataset(tmp_path, channel_names={"0": "CT"}), spacing=(0.8, 0.8, 2.5), window=window)
    assert (task.roi, task.max_epochs, task.val_every, task.warmup_epochs) == ((96, 96, 96), 300, 5, 10)
    assert task.spacing == (0.8, 0.8, 2.5) and task.mode == "softmax"
    assert (task.intensity.kind, task.intensity.a_min, task.intensity.a_max) == ("window", -100.0, 300.0)
    with pytest.raises(DatasetJsonError) as caught:  # an MRI dataset with neither images nor --space_x/y/z
        task_from_dataset(_dataset(tmp_path))
    assert str(caught.value) == "no training images to measure the spacing from (give --space_x/y/z)"


@pytest.mark.parametrize("name, expected", [
    ("Liver Tumours (2024)", "liver_tumours_2024"), ("  --  ", "custom"), ("", "custom"), (None, "custom"),
    ("my_task", "my_task"), ("UKBOB", "custom_ukbob"), ("btcv", "custom_btcv"), ("BraTS", "custom_brats"),
])
def test_a_task_is_named_from_the_dataset_in_lower_case_words_never_as_a_preset(name, expected):
    from swinbob.data.dataset_task import task_name
    assert task_name({"name": name}) == expected


def test_median_spacing_is_rounded_to_four_decimals(tmp_path):
    from swinbob.data.dataset_task import median_spacing
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.diag([0.123456, 1.0, 2.000049, 1.0])), tmp_path / "a.nii.gz")
    assert median_spacing([{"image": str(tmp_path / "a.nii.gz")}]) == (0.1235, 1.0, 2.0)
