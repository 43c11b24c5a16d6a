"""nnU-Net v2 raw dataset folders used as they are: training with ``--task auto --fold``, evaluation, prediction.

The folders are nnU-Net's layout (``dataset.json`` without case lists, ``imagesTr/{case}_{XXXX}.nii.gz``,
``labelsTr/{case}.nii.gz``, ``imagesTs/``, optional ``splits_final.json``); the default folds are checked
against folds scikit-learn's ``KFold(5, shuffle=True, random_state=12345)`` gives (nnU-Net's own split).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from swinbob.data.nnunet_raw import crossval_splits
from swinbob.data.transforms import load_datalist
from swinbob.infer.cli import main as evaluate
from swinbob.train import cli as train_cli

from custom_data import MRI_NAMES, write_dataset
from tiny import TINY_TRAIN_FLAGS

TINY = [*TINY_TRAIN_FLAGS, "--workers=0"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_raw(root: Path, num_cases: int, channels: tuple[str, ...] = ("MRI",), test_cases: int = 0) -> Path:
    """An nnU-Net v2 raw folder of nested-sphere phantoms; channel k > 0 is channel 0 inverted."""
    write_dataset(root, "MRI", num_cases=num_cases + test_cases)
    for index in range(num_cases + test_cases):
        first = root / "imagesTr" / f"case{index}_0000.nii.gz"
        image = nib.load(first)
        for channel in range(1, len(channels)):
            data = 700.0 - np.asarray(image.dataobj)
            nib.save(nib.Nifti1Image(data.astype(np.float32), image.affine), first.parent / f"case{index}_{channel:04d}.nii.gz")
        if index >= num_cases:  # the last cases become the unlabelled test set
            (root / "imagesTs").mkdir(exist_ok=True)
            for channel in range(len(channels)):
                name = f"case{index}_{channel:04d}.nii.gz"
                shutil.move(root / "imagesTr" / name, root / "imagesTs" / name)
            (root / "labelsTr" / f"case{index}.nii.gz").unlink()
    content = {"channel_names": {str(i): c for i, c in enumerate(channels)},
               "labels": {"background": 0, **{v: k for k, v in MRI_NAMES.items()}},
               "numTraining": num_cases, "file_ending": ".nii.gz", "name": "Dataset001_Spheres"}
    (root / "dataset.json").write_text(json.dumps(content))
    return root / "dataset.json"


def test_cases_are_found_by_channel_index_in_channel_order(tmp_path):
    datalist = write_raw(tmp_path, 3, channels=("T1", "T2"))
    entries = load_datalist(datalist, tmp_path, "training", fold=None)  # fold 0 of the default split (3 folds of 1)
    assert len(entries) == 2
    for entry in entries:
        case = Path(entry["label"]).name.removesuffix(".nii.gz")
        assert entry["image"] == [str(tmp_path / "imagesTr" / f"{case}_0000.nii.gz"),
                                  str(tmp_path / "imagesTr" / f"{case}_0001.nii.gz")]
        assert entry["label"] == str(tmp_path / "labelsTr" / f"{case}.nii.gz")
    val = load_datalist(datalist, tmp_path, "validation", fold=None)
    assert {Path(e["label"]).name for e in entries + val} == {"case0.nii.gz", "case1.nii.gz", "case2.nii.gz"}


def test_default_folds_are_nnunets(tmp_path):
    # Expected: sklearn.model_selection.KFold(5, shuffle=True, random_state=12345) over the sorted ids.
    seven = crossval_splits([f"case{i:02d}" for i in reversed(range(7))])
    assert [f["val"] for f in seven] == [["case03", "case06"], ["case00", "case04"], ["case01"], ["case05"], ["case02"]]
    twelve = crossval_splits([f"case{i:02d}" for i in range(12)])
    assert [f["val"] for f in twelve] == [["case00", "case03", "case08"], ["case07", "case10", "case11"],
                                          ["case06", "case09"], ["case01", "case04"], ["case02", "case05"]]
    for fold in twelve:
        assert sorted(fold["train"] + fold["val"]) == [f"case{i:02d}" for i in range(12)]


def test_every_missing_or_extra_channel_and_label_file_is_named_in_one_message(tmp_path, caplog):
    data = tmp_path / "Dataset002"
    datalist = write_raw(data, 4, channels=("T1", "T2"))
    (data / "imagesTr" / "case1_0001.nii.gz").unlink()  # a missing channel
    shutil.copy(data / "imagesTr" / "case0_0000.nii.gz", data / "imagesTr" / "case0_0002.nii.gz")  # a channel too many
    (data / "labelsTr" / "case2.nii.gz").unlink()  # a missing label
    shutil.copy(data / "labelsTr" / "case3.nii.gz", data / "labelsTr" / "case7.nii.gz")  # a label without images
    shutil.copy(data / "imagesTr" / "case3_0000.nii.gz", data / "imagesTr" / "scan.nii.gz")  # no channel index
    run = tmp_path / "run"
    status = train_cli.main(["--task=auto", f"--json_list={datalist}", f"--data_dir={data}", f"--logdir={run}", "--fold=0",
                             "--max_epochs=1", *TINY])
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    for named in ("case1_0001.nii.gz", "case0_0002.nii.gz", "labelsTr/case2.nii.gz", "labelsTr/case7.nii.gz", "scan.nii.gz"):
        assert named in errors[0]
    assert "5 problem(s)" in errors[0] and "nothing was trained" in errors[0]
    assert not (run / "model_final.pt").exists() and not (run / "splits_final.json").exists()


def test_without_splits_final_json_the_run_keeps_and_logs_nnunets_folds(tmp_path, caplog):
    datalist = write_raw(tmp_path / "data", 6)
    run = tmp_path / "run"
    args = train_cli.build_parser("ukbob").parse_args(
        ["--task=auto", f"--json_list={datalist}", f"--data_dir={datalist.parent}", f"--logdir={run}", "--fold=2", *TINY])
    plan = train_cli.resolve_plan(args)
    run.mkdir()
    caplog.set_level("INFO")
    train_cli.record_split(args, plan.logdir)
    expected = crossval_splits([f"case{i}" for i in range(6)])
    assert json.loads((run / "splits_final.json").read_text()) == expected
    assert "fold 2 of 5-fold split of 6 cases" in caplog.text and str(run / "splits_final.json") in caplog.text
    trained = {Path(e["label"]).name.removesuffix(".nii.gz") for e in plan.train_entries}
    validated = {Path(e["label"]).name.removesuffix(".nii.gz") for e in plan.val_entries}
    assert (sorted(trained), sorted(validated)) == (expected[2]["train"], expected[2]["val"])
    # A run folder holding other folds is refused: resuming would validate on training cases.
    (run / "splits_final.json").write_text(json.dumps(list(reversed(expected))))
    with pytest.raises(Exception, match="holds other folds"):
        train_cli.record_split(args, plan.logdir)


def test_a_fold_the_splits_do_not_have_is_refused_naming_the_file(tmp_path, caplog):
    datalist = write_raw(tmp_path / "data", 3)
    splits = [{"train": ["case0", "case1"], "val": ["case2"]}]
    (tmp_path / "data" / "splits_final.json").write_text(json.dumps(splits))
    status = train_cli.main(["--task=auto", f"--json_list={datalist}", f"--data_dir={tmp_path / 'data'}",
                             f"--logdir={tmp_path / 'run'}", "--fold=3", *TINY])
    assert status == 2 and "--fold 3" in caplog.text and "splits_final.json has 1 fold(s)" in caplog.text


def test_a_raw_folder_trains_on_a_splits_fold_evaluates_it_and_predicts_imagests(tmp_path):
    from swinbob.commands import main as swinbob_command

    data = tmp_path / "Dataset003_Spheres"
    datalist = write_raw(data, 4, channels=("T1", "T2"), test_cases=1)
    splits = [{"train": ["case0", "case1", "case2"], "val": ["case3"]}, {"train": ["case1", "case2", "case3"], "val": ["case0"]}]
    elsewhere = tmp_path / "nnUNet_preprocessed" / "splits_final.json"  # given by path, as nnU-Net keeps it
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(splits))
    run = tmp_path / "run"
    assert train_cli.main(["--task=auto", "--json_list=dataset.json", f"--data_dir={data}", f"--logdir={run}",
                           f"--splits={elsewhere}", "--fold=1", "--max_epochs=1", "--max_steps_per_epoch=1",
                           "--num_samples=1", "--val_every=1", "--save_checkpoint", *TINY]) == 0
    assert json.loads((run / "splits_final.json").read_text()) == splits
    out = tmp_path / "eval"
    assert evaluate([f"--pretrained_dir={run}", "--pretrained_model_name=model_final.pt", "--json_list=dataset.json",
                     f"--data_dir={data}", f"--splits={run / 'splits_final.json'}", "--fold=1", f"--output_dir={out}",
                     "--no_etta", "--workers=0"], default_task="btcv") == 0
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == {"case0_0000"}  # fold 1's validation case only
    assert {r.split(",")[2] for r in rows} == set(MRI_NAMES.values())
    tested = tmp_path / "test"  # --split test: the cases of imagesTs (no labels: predictions only)
    assert evaluate([f"--pretrained_dir={run}", "--pretrained_model_name=model_final.pt", "--json_list=dataset.json",
                     f"--data_dir={data}", "--split=test", f"--output_dir={tested}", "--no_etta", "--workers=0"],
                    default_task="btcv") == 0
    assert [p.name for p in (tested / "predictions").iterdir()] == ["case4_0000.nii.gz"]
    predicted = tmp_path / "pred"
    assert swinbob_command(["predict", "-i", str(data / "imagesTs"), "-o", str(predicted), "-m",
                            str(run / "model_final.pt"), "--workers=0"]) == 0
    image = nib.load(data / "imagesTs" / "case4_0000.nii.gz")
    prediction = nib.load(predicted / "predictions" / "case4.nii.gz")
    assert prediction.shape == image.shape and np.allclose(prediction.affine, image.affine)
