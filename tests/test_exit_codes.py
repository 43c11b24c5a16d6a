"""One exit-code table for every entry point: each wrong setting exits 2 with one line naming it.

Every script is run as ``python <script> ...`` would run it (in-process, ``runpy``): the three
training scripts, the three evaluation scripts, ``UKBOB/predict.py`` and ``swinbob predict``.
No row may reach training or inference, print a traceback, or log more than one error line.
"""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path

import pytest
import torch

from custom_data import write_dataset
from swinbob.checkpoint import make_checkpoint
from swinbob.data.transforms import DataConfig
from swinbob.data.dataset_task import task_from_dataset
from swinbob.model import ModelConfig, build_model
from swinbob.train.state import run_config
from tiny import TINY_FEATURE_SIZE, TINY_ROI

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["UKBOB/main.py", "BTCV/main.py", "BRATS/main.py"]
EVALUATE = ["UKBOB/test_etta.py", "BTCV/test_etta.py", "BRATS/test_etta.py"]
PREDICT = ["UKBOB/predict.py", "swinbob predict"]

# (entry points, extra flags, text the one error line must contain)
TABLE = [
    (TRAIN + EVALUATE, ["--roi_x=50"], "--roi_x"),
    (TRAIN + EVALUATE, ["--feature_size=50"], "--feature_size"),
    (TRAIN, ["--in_channels=3"], "--in_channels"),
    (EVALUATE, ["--in_channels=0"], "--in_channels"),
    (TRAIN, ["--out_channels=5"], "--out_channels"),
    (TRAIN + EVALUATE, ["--task=auto", "--et_label=4"], "--et_label"),
    (TRAIN, ["--task=btcv", "--bce_weight=1"], "--bce_weight"),
    (TRAIN, ["--task=ukbob", "--a_min=0", "--a_max=1"], "--a_min"),
    (TRAIN + EVALUATE, ["--a_min=100", "--a_max=-100"], "--a_min"),
    (TRAIN + EVALUATE + PREDICT, ["--infer_overlap=1.5"], "--infer_overlap"),
    (TRAIN + EVALUATE + PREDICT, ["--sw_batch_size=0"], "--sw_batch_size"),
    (TRAIN, ["--max_epochs=0"], "--max_epochs"),
    (TRAIN, ["--RandFlipd_prob=2"], "--RandFlipd_prob"),
    (TRAIN + EVALUATE, ["--space_x=0", "--space_y=1", "--space_z=1"], "--space_x"),
    (TRAIN + EVALUATE, ["--roi_x=64"], "--roi_x, --roi_y, --roi_z"),
    (TRAIN + EVALUATE, ["--json_list=BAD_JSON"], "bad.json"),
    (TRAIN + EVALUATE, ["--task=auto", "--json_list=NO_LABELS"], "'labels'"),
    (TRAIN, ["--task=auto", "--json_list=NO_REGION_ORDER"], "'regions_class_order'"),  # evaluation: the checkpoint's order
    (EVALUATE, ["--json_list=TWO_CHANNELS"], "two_channels.json"),
    (EVALUATE + PREDICT, ["MODEL=missing.pt"], "missing.pt"),
    (EVALUATE + PREDICT, ["MODEL=garbage.pt"], "garbage.pt"),
    (PREDICT, ["INPUT=nowhere"], "nowhere"),
]
ROWS = [pytest.param(entry, flags, expected, id=f"{entry}:{' '.join(flags)}") for entries, flags, expected in TABLE
        for entry in entries]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset, a checkpoint of the right task for it (untrained), and broken variants of both."""
    root = tmp_path_factory.mktemp("exit_codes")
    datalist = write_dataset(root / "data", "MRI")
    task = task_from_dataset(datalist, spacing=(2, 2, 2.5))
    config = ModelConfig.from_task(task, feature_size=TINY_FEATURE_SIZE, roi=TINY_ROI)
    checkpoint = make_checkpoint(build_model(config), run_config(task, config, DataConfig.from_task(task)))
    (root / "models").mkdir()
    torch.save(checkpoint, root / "models" / "model.pt")
    (root / "models" / "garbage.pt").write_bytes(b"not a checkpoint at all")
    content = json.loads(datalist.read_text())
    (root / "bad.json").write_text("{not json")
    (root / "no_labels.json").write_text(json.dumps({k: v for k, v in content.items() if k != "labels"}))
    (root / "two_channels.json").write_text(json.dumps({**content, "channel_names": {"0": "T1", "1": "T2"}}))
    regions = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "inner": 3}  # nnU-Net needs their write order
    (root / "no_region_order.json").write_text(json.dumps({**content, "labels": regions}))
    (root / "images").mkdir()
    return root


def _argv(entry: str, flags: list[str], root: Path, out: Path) -> list[str]:
    data = root / "data"
    files = {"BAD_JSON": root / "bad.json", "NO_LABELS": root / "no_labels.json", "TWO_CHANNELS": root / "two_channels.json",
             "NO_REGION_ORDER": root / "no_region_order.json"}
    model, inputs, rest = root / "models" / "model.pt", root / "images", []
    for flag in flags:
        if flag.startswith("MODEL="):
            model = root / "models" / flag.removeprefix("MODEL=")
        elif flag.startswith("INPUT="):
            inputs = root / flag.removeprefix("INPUT=")
        else:
            key = flag.split("=", 1)[-1]
            rest.append(flag.replace(key, str(files[key])) if key in files else flag)
    if entry in PREDICT:
        return ["-i", str(inputs), "-o", str(out), "-m", str(model), *rest]
    common = [f"--json_list={data / 'dataset.json'}", f"--data_dir={data}", "--workers=0"]
    if entry in TRAIN:
        return [*common, f"--logdir={out}", "--max_epochs=1", *rest]
    return [*common, f"--pretrained_dir={model.parent}", f"--pretrained_model_name={model.name}",
            f"--output_dir={out}", "--no_etta", *rest]


def run_entry(entry: str, argv: list[str]) -> int:
    """``python <entry> argv`` in this process; returns the exit status."""
    if entry == "swinbob predict":
        from swinbob.commands import main
        return main(["predict", *argv])
    saved = sys.argv
    sys.argv = [str(REPO / entry), *argv]
    try:
        runpy.run_path(str(REPO / entry), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    return 0


@pytest.mark.parametrize("entry, flags, expected", ROWS)
def test_wrong_setting_exits_2_with_one_line_naming_it(entry, flags, expected, world, caplog, monkeypatch, tmp_path):
    import swinbob.train.cli

    monkeypatch.setattr(swinbob.train.cli, "launch", lambda *a, **k: pytest.fail("training started despite a wrong setting"))
    caplog.set_level(logging.INFO)
    argv = _argv(entry, flags, world, tmp_path / "out")
    assert run_entry(entry, argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    assert expected in errors[0], errors[0]
    assert not (tmp_path / "out").exists()  # nothing was trained, evaluated or predicted
