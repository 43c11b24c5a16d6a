"""The test_etta.py command line: the upstream BTCV command, folder prediction, exit codes."""

import json
import runpy
import sys
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import torch

from swinbob.checkpoint import make_checkpoint
from swinbob.infer.etta import EttaConfig
from swinbob.infer.cli import build_parser, main, setup
from swinbob.model import ModelConfig, build_model
from swinbob.tasks import get_task
from tiny import WIDE_ROI, tiny_config, tiny_flags

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = ("--json_list=./data/BTCV/dataset_0.json --data_dir=./data/BTCV/ --feature_size=48 --infer_overlap=0.5 "
            "--pretrained_model_name=model_final.pt --generate_gifs --gif_frames 120 --gif_downsample 2 "
            "--gif_duration 0.7").split()
TINY = tiny_config(roi=WIDE_ROI)
SIZE_FLAGS = list(tiny_flags(WIDE_ROI))  # one window holds a whole btcv_folder volume


def upstream_checkpoint(path: Path, config: ModelConfig = TINY) -> None:
    torch.manual_seed(0)
    model = build_model(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "epoch": 5, "best_acc": np.float64(0.5)}, path)


def btcv_folder(root: Path) -> Path:
    """``root``/BTCV laid out like the upstream repo: data/BTCV/{imagesTr,labelsTr,dataset_0.json} and
    pretrained_models/model_final.pt. Volumes are small (one ROI after preprocessing) to keep ETTA cheap
    on a CPU; their affine is anisotropic and not RAS."""
    folder, data = root / "BTCV", root / "BTCV" / "data" / "BTCV"
    affine = np.array([[-1.5, 0, 0, 20.0], [0, -1.5, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
    entries = []
    for index in (1, 2):
        image = np.full((41, 25, 19), -1000, np.int16)
        image[3:38, 2:23, 2:17] = 40
        label = np.zeros(image.shape, np.uint8)
        label[8:20, 5:15, 4:12], label[24:33, 8:20, 6:14] = 6, 1
        image[label == 6], image[label == 1] = 120, 90
        for sub, name, array in (("imagesTr", f"img{index:04d}", image), ("labelsTr", f"label{index:04d}", label)):
            (data / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), data / sub / f"{name}.nii.gz")
        entries.append({"image": f"imagesTr/img{index:04d}.nii.gz", "label": f"labelsTr/label{index:04d}.nii.gz"})
    datalist = {"training": entries[:1], "validation": entries[1:], "labels": {"0": "background", "6": "liver"}}
    (data / "dataset_0.json").write_text(json.dumps(datalist))
    upstream_checkpoint(folder / "pretrained_models" / "model_final.pt")
    return folder


def run_script(script: Path, argv: list[str]) -> int:
    """Run a script as ``python script argv`` would, in this process (the cwd is the caller's)."""
    saved = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = saved
    return 0


def test_upstream_btcv_command_runs_unchanged_from_inside_the_btcv_folder(tmp_path, monkeypatch):
    folder = btcv_folder(tmp_path)
    monkeypatch.chdir(folder)
    assert run_script(REPO / "BTCV" / "test_etta.py", UPSTREAM + SIZE_FLAGS) == 0
    out = folder / "outputs" / "test"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"]["evaluated"] == 1 and summary["methods"] == ["etta"]
    assert set(summary["metrics"]["etta"]["dice"]["per_class"]) == set(summary["classes"])
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "case,method,class,dice,hd95_mm" and len(rows) == 1 + 13
    case = json.loads((folder / "data" / "BTCV" / "dataset_0.json").read_text())["validation"][0]
    depth = nib.load(folder / "data" / "BTCV" / case["image"]).shape[2]
    gif = out / "gifs" / (Path(case["image"]).name.replace(".nii.gz", ".gif"))
    assert iio.imread(gif, index=None).shape[0] == min(120, depth)
    assert (out / "predictions" / Path(case["image"]).name).is_file()  # written by default (--no_save_predictions)


def test_folder_prediction_with_our_checkpoint_format_skips_done_cases(tmp_path):
    affine = np.array([[0, -1.5, 0, 5.0], [0, 0, 2.0, -3.0], [-1.5, 0, 0, 7.0], [0, 0, 0, 1]])
    image = np.full((30, 33, 41), -1000.0, np.float32)
    image[4:26, 5:28, 6:35] = 40.0
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "in" / "scan.nii.gz")
    model = build_model(TINY)
    ckpt = make_checkpoint(model, {"model": TINY.to_dict(), "task": "btcv"}, epoch=1)
    (tmp_path / "ckpt").mkdir()
    torch.save(ckpt, tmp_path / "ckpt" / "model.pt")
    argv = ["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"), "--no_etta", "--workers", "0",
            "--pretrained_dir", str(tmp_path / "ckpt"), "--pretrained_model_name", "model.pt"]
    assert main(argv, default_task="btcv") == 0  # feature_size 48 (default flag) yields to the checkpoint's 12
    written = nib.load(tmp_path / "out" / "predictions" / "scan.nii.gz")
    assert written.shape == image.shape and np.array_equal(written.affine, nib.load(tmp_path / "in" / "scan.nii.gz").affine)
    assert main(argv, default_task="btcv") == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"] == ["scan"]


def test_brats_script_writes_labels_in_the_input_space(tmp_path, monkeypatch):
    affine = np.array([[0, 1.0, 0, -10.0], [-1.0, 0, 0, 12.0], [0, 0, 1.0, 4.0], [0, 0, 0, 1]])
    case_dir = tmp_path / "data" / "BraTS-GLI-00001-000"
    case_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for channel in ("t1n", "t1c", "t2w", "t2f"):
        image = np.zeros((30, 40, 28), np.float32)
        image[3:27, 4:36, 3:25] = rng.uniform(0.5, 1.5, size=(24, 32, 22))
        files.append(f"BraTS-GLI-00001-000/BraTS-GLI-00001-000-{channel}.nii.gz")
        nib.save(nib.Nifti1Image(image, affine), tmp_path / "data" / files[-1])
    label = np.zeros((30, 40, 28), np.uint8)
    label[10:20, 10:20, 10:20] = 2
    nib.save(nib.Nifti1Image(label, affine), case_dir / "BraTS-GLI-00001-000-seg.nii.gz")
    seg = "BraTS-GLI-00001-000/BraTS-GLI-00001-000-seg.nii.gz"
    (tmp_path / "data" / "folds.json").write_text(json.dumps({"training": [{"image": files, "label": seg, "fold": 0}]}))
    upstream_checkpoint(tmp_path / "pretrained_models" / "model_final.pt", tiny_config(4, 3, roi=WIDE_ROI))
    monkeypatch.chdir(tmp_path)
    argv = ["--json_list=folds.json", "--data_dir=./data/", "--fold=0", "--no_etta", "--save_predictions", "--workers=0", *SIZE_FLAGS]
    assert run_script(REPO / "BRATS" / "test_etta.py", argv) == 0
    written = nib.load(tmp_path / "outputs" / "test" / "predictions" / "BraTS-GLI-00001-000.nii.gz")
    assert written.shape == label.shape and np.array_equal(written.affine, nib.load(case_dir / "BraTS-GLI-00001-000-seg.nii.gz").affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 3}
    rows = (tmp_path / "outputs" / "test" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows[1:]] == ["TC", "WT", "ET"]


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    folder = btcv_folder(tmp_path)
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("extra", [
    ["--pretrained_model_name=missing.pt"],
    ["--roi_x=40"],
    ["--label_map", '{"5": 99}'],
    ["--out_channels=73"],
    ["--device=cuda:7"] if not torch.cuda.is_available() else ["--split=nonexistent"],
    ["--split=nonexistent"],
    ["--etta_overlap=1.0"],
])
def test_configuration_errors_exit_2_before_any_case(cohort, extra):
    argv = ["--json_list=./data/BTCV/dataset_0.json", "--data_dir=./data/BTCV/", *SIZE_FLAGS, *extra]
    assert main(argv) == 2
    assert not (cohort / "outputs" / "test" / "summary.json").exists()


def test_etta_overlap_flag_sets_the_adapted_window_only(cohort):
    args = build_parser("btcv").parse_args(["--json_list=./data/BTCV/dataset_0.json", "--data_dir=./data/BTCV/",
                                            "--device=cpu", "--infer_overlap=0.5", "--etta_overlap=0.4", *SIZE_FLAGS])
    _model, _cases, settings, context = setup(args)
    assert settings.etta.overlap == 0.4 and context["etta_config"]["overlap"] == 0.4
    assert settings.window.overlap == 0.5
    assert build_parser("btcv").parse_args([]).etta_overlap == EttaConfig().overlap


def test_existing_results_are_not_overwritten(cohort):
    (cohort / "outputs" / "test").mkdir(parents=True)
    (cohort / "outputs" / "test" / "metrics.csv").write_text("precious\n")
    assert main(["--json_list=./data/BTCV/dataset_0.json", "--data_dir=./data/BTCV/", *SIZE_FLAGS]) == 2
    assert (cohort / "outputs" / "test" / "metrics.csv").read_text() == "precious\n"


def test_a_run_whose_every_case_fails_exits_1(cohort):
    data = cohort / "data" / "BTCV"
    datalist = json.loads((data / "dataset_0.json").read_text())
    (data / datalist["validation"][0]["image"]).write_bytes(b"truncated")
    assert main(["--json_list=./data/BTCV/dataset_0.json", "--data_dir=./data/BTCV/", "--workers=0", *SIZE_FLAGS]) == 1
    summary = json.loads((cohort / "outputs" / "test" / "summary.json").read_text())
    assert summary["cases"]["failed"] == 1
    assert summary["failures"][0]["reason"].startswith("NiftiError") and "img0002.nii.gz" in summary["failures"][0]["reason"]


def test_tta_and_new_etta_flags_reach_the_settings_and_the_summary(cohort):
    base = ["--json_list=./data/BTCV/dataset_0.json", "--data_dir=./data/BTCV/", "--device=cpu", "--workers=0", *SIZE_FLAGS]
    args = build_parser("btcv").parse_args([*base, "--tta", "flip", "--etta_diversity=0.3", "--etta_decoder_norms",
                                            "--etta_sharpness=4", "--etta_min_entropy=0.1"])
    _model, _cases, settings, context = setup(args)
    assert settings.tta == "flip" and context["tta"] == "flip"
    assert settings.mirror_channels == get_task("btcv").mirror_channels  # BTCV's kidneys and adrenal glands
    assert (settings.etta.diversity, settings.etta.decoder_norms, settings.etta.sharpness, settings.etta.min_entropy) == \
        (0.3, True, 4.0, 0.1)
    assert build_parser("btcv").parse_args([]).tta == "none"
    assert main([*base, "--tta", "flip", "--no_etta"]) == 0
    summary = json.loads((cohort / "outputs" / "test" / "summary.json").read_text())
    assert summary["tta"] == "flip" and summary["cases"]["evaluated"] == 1
    log = (cohort / "outputs" / "test" / "evaluate.log").read_text()
    assert "left/right channels swapped in mirror images: left_kidney/right_kidney, " \
           "left_adrenal_gland/right_adrenal_gland" in log
