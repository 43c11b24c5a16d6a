"""SOLF's output is a training input: a short run on the dataset.json SOLF writes, whose cleaned
labels hold the ignore value 255 where organs were rejected (the phantoms never write 255)."""

import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import swinbob.train.engine as train
import swinbob.train.cli as train_cli
from swinbob.checkpoint import load_checkpoint
from swinbob.runtime.distributed import DistContext
from swinbob.labels import IGNORE_LABEL
from swinbob.data.phantoms import write_cohort
from swinbob.solf.inject import swap
from swinbob.solf.cli import organ_filtering_entry
from swinbob.train.cli import build_parser, resolve_plan
from tiny import TINY_FLAGS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def solf_output(tmp_path_factory) -> Path:
    """Eight UKBOB phantoms, every one with its kidneys swapped except two: SOLF rejects the swapped
    kidneys (left/right test) and writes 255 there."""
    root = tmp_path_factory.mktemp("solf_train")
    write_cohort("ukbob", root / "raw", 8, shape=(32, 32, 40), seed=5)
    for path in sorted((root / "raw" / "labelsTr").glob("*.nii.gz"))[2:]:
        img = nib.load(path)
        nib.save(nib.Nifti1Image(swap(np.asanyarray(img.dataobj), 3, 2), img.affine, img.header), path)
    out = root / "cleaned"
    assert organ_filtering_entry(["--input_dir", str(root / "raw" / "labelsTr"), "--image_dir", str(root / "raw" / "imagesTr"),
                                  "--output_dir", str(out), "--workers", "1", "--no_figure", "--log_level", "WARNING",
                                  "--val_fraction", "0.25"]) == 0
    return out


def _argv(out: Path, logdir: Path) -> list[str]:
    """The README's way: --data_dir is the dataset.json's data_root (the log of SOLF prints it)."""
    data_root = (out / json.loads((out / "dataset.json").read_text())["data_root"]).resolve()
    return [f"--json_list={out / 'dataset.json'}", f"--data_dir={data_root}", f"--logdir={logdir}", "--workers=0",
            *TINY_FLAGS, "--space_x=4", "--space_y=4", "--space_z=5", "--num_samples=1", "--max_epochs=1", "--max_steps_per_epoch=3", "--val_every=1",
            "--warmup_epochs=0", "--save_checkpoint"]


def test_a_short_run_trains_on_solf_output_with_ignored_voxels(solf_output, tmp_path, caplog):
    dataset = json.loads((solf_output / "dataset.json").read_text())
    root = solf_output / dataset["data_root"]
    ignored = [e for e in dataset["training"] if (np.asanyarray(nib.load(root / e["label"]).dataobj) == IGNORE_LABEL).any()]
    assert ignored, "SOLF wrote no 255 into the training labels"
    argv = _argv(solf_output, tmp_path / "run")
    plan = resolve_plan(build_parser("ukbob").parse_args(argv))
    loader, _ = train.build_loaders(plan, DistContext())
    batches = [batch for _, batch in zip(range(len(loader)), train.batch_stream(loader, 0))]
    assert any((b["label"] == IGNORE_LABEL).any() for b in batches)  # the loss does see 255 voxels
    caplog.set_level(logging.INFO)
    assert train_cli.main(argv, default_task="ukbob") == 0
    loss = [float(m.split("loss ")[1].split(",")[0]) for m in caplog.messages if "epoch 1/1: loss" in m]
    assert len(loss) == 1 and math.isfinite(loss[0]) and 0 < loss[0] < 10
    assert "validation after epoch 1: mean Dice" in caplog.text
    checkpoint = load_checkpoint(tmp_path / "run" / "model.pt")
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
