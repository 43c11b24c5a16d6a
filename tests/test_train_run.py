"""End-to-end training runs on synthetic cohorts with a tiny Swin-UNETR (feature_size 12).

A 32x32x64 ROI is the smallest that trains: at 32^3 the bottleneck is one voxel, which instance
normalisation refuses in training mode. Runs use one CPU thread per process: on a small CI machine
two threads per process cost more in contention than they gain.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import swinbob.train.engine as train
import swinbob.train.cli as train_cli
from swinbob.checkpoint import load_checkpoint
from swinbob.runtime.distributed import DistContext
from swinbob.model import ModelConfig, build_model
from swinbob.data.phantoms import write_cohort
from swinbob.runtime.devices import seed_everything
from swinbob.train.cli import build_parser, resolve_plan
from swinbob.train.validation import validate
from tiny import TINY_FLAGS

REPO = Path(__file__).resolve().parents[1]
TINY = list(TINY_FLAGS)
# Coarse voxels: the whole phantom torso fits one ROI, so one window validates a case.
pytestmark = pytest.mark.usefixtures("one_torch_thread")
COARSE = ["--space_x=4", "--space_y=4", "--space_z=4"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def btcv(tmp_path_factory) -> Path:
    return write_cohort("btcv", tmp_path_factory.mktemp("btcv"), 8, shape=(48, 48, 40)).parent


@pytest.fixture(scope="module")
def ukbob(tmp_path_factory) -> Path:
    """Three training and three validation cases (an odd count for the 2-rank split)."""
    return write_cohort("ukbob", tmp_path_factory.mktemp("ukbob") / "UKBOB", 6, shape=(32, 32, 40), val_fraction=0.5).parent


def btcv_args(data: Path, logdir: Path, *extra: str) -> list[str]:
    return [f"--json_list={data / 'dataset.json'}", f"--data_dir={data}", f"--logdir={logdir}", "--workers=0",
            "--num_samples=1", "--warmup_epochs=0", *TINY, *COARSE, *extra]


def upstream_ukbob_command(data: Path, logdir: Path, *extra: str) -> list[str]:
    """The README's UKBOB command; only sizes changed (plus a logdir outside the repository)."""
    return [
        sys.executable, "main.py", "--json_list=./dataset.json", f"--data_dir={data}/", "--val_every=5", "--use_checkpoint",
        *TINY_FLAGS, "--in_channels=4", "--spatial_dims=3",
        "--save_checkpoint", "--batch_size=1",
        "--max_epochs=1", "--max_steps_per_epoch=2", "--num_samples=1", "--space_x=4", "--space_y=4", "--space_z=5",
        f"--logdir={logdir}", *extra,
    ]


def run_in_ukbob_folder(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO / "UKBOB", env=ONE_THREAD, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ukbob_run(ukbob, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    logdir = tmp_path_factory.mktemp("runs") / "ukbob"
    return logdir, run_in_ukbob_folder(upstream_ukbob_command(ukbob, logdir))


def test_upstream_ukbob_command_trains_from_inside_the_ukbob_folder(ukbob_run):
    logdir, run = ukbob_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert "validation after epoch 1: mean Dice" in run.stderr and "liver" in run.stderr
    for name in ("model.pt", "model_final.pt", "last.pt", "config.json"):
        assert (logdir / name).is_file(), name
    assert list(logdir.glob("events.out.tfevents.*"))
    last = torch.load(logdir / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 and last["config"]["task"] == "ukbob"
    assert last["config"]["out_channels"] == 73 and len(last["config"]["class_names"]) == 73
    assert set(last) >= {"format_version", "model", "optimizer", "scheduler", "scaler", "best_metric", "rng"}


def test_finetuning_btcv_from_the_ukbob_checkpoint_reports_the_transfer(ukbob_run, btcv, tmp_path, caplog):
    logdir, run = ukbob_run
    assert run.returncode == 0, run.stderr[-3000:]
    caplog.set_level(logging.INFO, logger="swinbob")
    argv = btcv_args(btcv, tmp_path / "ft", "--max_epochs=1", "--max_steps_per_epoch=1",
                     f"--pretrained_dir={logdir}", "--pretrained_model_name=model.pt")
    assert train_cli.main(argv, default_task="btcv") == 0
    report = next(r.getMessage() for r in caplog.records if "loaded" in r.getMessage() and "tensors" in r.getMessage())
    loaded, total = map(int, report.split("loaded ")[1].split(" tensors")[0].split("/"))
    assert 0 < loaded < total and "out.conv.conv.weight" in report  # new 14-class head
    assert "left/right label pairs swapped in mirrored patches: left_kidney/right_kidney, " \
           "left_adrenal_gland/right_adrenal_gland" in caplog.text
    assert load_checkpoint(tmp_path / "ft" / "last.pt")["config"]["out_channels"] == 14


def test_finetuning_brats_regions_from_the_ukbob_checkpoint(ukbob_run, tmp_path_factory, tmp_path, caplog):
    logdir, run = ukbob_run
    assert run.returncode == 0, run.stderr[-3000:]
    data = write_cohort("brats", tmp_path_factory.mktemp("brats"), 5, shape=(32, 32, 32)).parent
    caplog.set_level(logging.INFO, logger="swinbob")
    # The phantom list keeps fold 0 apart as "validation"; fold 1 validates on a "training" case.
    argv = btcv_args(data, tmp_path / "brats", "--max_epochs=1", "--max_steps_per_epoch=1", "--fold=1", "--bce_weight=0.5",
                     "--save_checkpoint", f"--pretrained_dir={logdir}", "--pretrained_model_name=model.pt")
    assert train_cli.main(argv, default_task="brats") == 0
    assert "re-initialised (shape differs): out.conv.conv.weight" in caplog.text  # 4 channels in: only the head differs
    assert "validation after epoch 1: mean Dice" in caplog.text and "TC " in caplog.text and "ET " in caplog.text
    assert "left/right label pairs" not in caplog.text  # regions have no sides
    best = load_checkpoint(tmp_path / "brats" / "model.pt")
    assert best["config"]["mode"] == "regions" and best["config"]["out_channels"] == 3 and best["best_metric"] is not None

def test_two_process_gloo_run_validates_each_case_once(ukbob, tmp_path):
    logdir = tmp_path / "ddp"
    # No loader worker processes: two ranks already share the two cores of a small CI machine.
    command = upstream_ukbob_command(ukbob, logdir, "--distributed", "--world_size=2", "--device=cpu", "--workers=0")
    run = run_in_ukbob_folder(command)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "validation after epoch 1" in run.stderr
    best = load_checkpoint(logdir / "model.pt")
    # One process re-validating the saved weights over all cases must give the 2-rank result.
    plan = resolve_plan(build_parser("ukbob").parse_args(command[2:]))
    model = build_model(ModelConfig.from_dict(best["config"]))
    model.load_state_dict(best["model"])
    _, val_loader = train.build_loaders(plan, DistContext())
    assert len(val_loader) == 3
    metrics = validate(model, val_loader, plan.task, plan.model.roi, overlap=plan.overlap)
    assert metrics["mean"] == pytest.approx(best["best_metric"], abs=1e-6)


def _validate(plan, model) -> dict[str, float]:
    _, val_loader = train.build_loaders(plan, DistContext())
    return validate(model, val_loader, plan.task, plan.model.roi, overlap=plan.overlap)


def test_short_btcv_run_raises_validation_dice(btcv, tmp_path):
    # Without flips the left/right organs keep their side, which the tiny network learns sooner.
    argv = btcv_args(btcv, tmp_path / "learn", "--max_epochs=5", "--max_steps_per_epoch=6", "--val_every=1",
                     "--optim_lr=3e-3", "--lrschedule=none", "--RandFlipd_prob=0", "--RandRotate90d_prob=0",
                     "--save_checkpoint")
    plan = resolve_plan(build_parser("btcv").parse_args(argv))
    seed_everything(plan.options.seed)  # the run's initial weights
    start = _validate(plan, build_model(plan.model))
    assert train_cli.main(argv, default_task="btcv") == 0
    best = load_checkpoint(tmp_path / "learn" / "model.pt")
    model = build_model(ModelConfig.from_dict(best["config"]))
    model.load_state_dict(best["model"])
    trained = _validate(plan, model)
    print(f"mean Dice {start['mean']:.4f} -> {trained['mean']:.4f}; liver {start['liver']:.3f} -> {trained['liver']:.3f}")
    assert trained["mean"] == pytest.approx(best["best_metric"], abs=1e-6)
    assert trained["mean"] >= start["mean"] + 0.01 and trained["mean"] >= 5 * start["mean"]
    assert trained["liver"] >= start["liver"] + 0.1
