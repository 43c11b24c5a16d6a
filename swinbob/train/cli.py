"""Training command line (upstream ``main.py`` flags plus a few new ones) and its resolution.

:func:`build_parser` accepts the upstream research commands unchanged; :func:`resolve_plan`
turns the parsed flags into a :class:`TrainPlan` of plain, checked values (task defaults filled
in, paths resolved, the datalist read) before any process is spawned, so that mistakes are
reported once, immediately, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from swinbob.checkpoint import previous_checkpoint
from swinbob.data.dataset_task import DatasetJsonError
from swinbob.data.nnunet_raw import SPLITS_FILE, raw_fold_split, splits_text
from swinbob.data.transforms import find_datalist
from swinbob.files import NiftiError, OutputError, atomic_write_text, check_writable_folder, folder_lock
from swinbob.cli import (
    HelpFormatter, apply_limit_args, add_compile_args, add_data_args, add_model_args, add_task_args, check_settings, data_config,
    infer_overlap, model_config, presets_epilog, resolve_task,
)
from swinbob.errors import ConfigError
from swinbob.data.loaders import DatalistError, load_splits
from swinbob.runtime.distributed import launch
from swinbob.runtime.logs import configure_logging
from swinbob.model import ROI_MULTIPLE, ModelConfig
from swinbob.train.plan import TrainOptions, TrainPlan, logdir_path
from swinbob.tasks import AUTO, Task
from swinbob.train import engine

EXIT_CODES = ("exit codes: 0 finished; 1 run failure; 2 configuration error or datalist problems (all listed, nothing "
              "trained); 3 training diverged or a checkpoint is unusable; 4 stopped by SIGTERM/SIGINT after saving "
              "last.pt (run again with --resume)")
log = logging.getLogger("swinbob.train.engine")

SSL_WEIGHTS_NAME = "model_swinvit.pt"
"""File name of MONAI's self-supervised Swin-ViT weights, as the upstream scripts expect it."""


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Optimisation, schedule, checkpoint and distributed flags (upstream names and defaults)."""
    g = parser.add_argument_group("training")
    g.add_argument("--logdir", default=None, help="run folder: ./runs/<logdir> (absolute paths as given; default: the task name)")
    g.add_argument("--save_checkpoint", action="store_true", help="keep model.pt (best validation Dice) and model_final.pt")
    g.add_argument("--checkpoint", default=None, help="start from this checkpoint's weights, epoch and best metric (upstream)")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue exactly from a full-state checkpoint (default PATH: <logdir>/last.pt; if PATH is "
                        "unreadable, its predecessor <name>.prev.pt is used with a warning)")
    g.add_argument("--pretrained_dir", default="./pretrained_models/", help="folder of --pretrained_model_name")
    g.add_argument("--pretrained_model_name", default=None, help="checkpoint to fine-tune from (e.g. a UKBOB model.pt)")
    g.add_argument("--resume_ckpt", action="store_true", help="load --pretrained_dir/--pretrained_model_name (upstream)")
    g.add_argument("--use_ssl_pretrained", action="store_true", help=f"load self-supervised encoder weights (default name {SSL_WEIGHTS_NAME})")
    g.add_argument("--max_epochs", type=int, default=None, help="epochs (default: the task's)")
    g.add_argument("--max_steps_per_epoch", type=int, default=None, help="cap the steps of each epoch (quick tests, demos)")
    g.add_argument("--batch_size", type=int, default=1, help="volumes per step (each gives --num_samples patches)")
    g.add_argument("--num_samples", type=int, default=None, help="patches cropped per volume (default: the task's)")
    g.add_argument("--val_every", type=int, default=None, help="validate every N epochs (default: the task's)")
    g.add_argument("--optim_name", default="adamw", choices=["adamw", "adam", "sgd"])
    g.add_argument("--optim_lr", type=float, default=None, help="peak learning rate (default: the task's)")
    g.add_argument("--reg_weight", type=float, default=None, help="weight decay (default: the task's)")
    g.add_argument("--momentum", type=float, default=0.99, help="SGD momentum")
    g.add_argument("--lrschedule", default="warmup_cosine", choices=["warmup_cosine", "cosine_anneal", "none"])
    g.add_argument("--warmup_epochs", type=int, default=None, help="linear warm-up epochs (default: the task's)")
    g.add_argument("--squared_dice", action="store_true", help="squared probabilities in the Dice denominator")
    g.add_argument("--smooth_nr", type=float, default=0.0, help="Dice numerator smoothing")
    g.add_argument("--smooth_dr", type=float, default=1e-6, help="Dice denominator smoothing")
    g.add_argument("--bce_weight", type=float, default=0.0, help="region tasks: weight of a BCE term next to the sigmoid Dice")
    g.add_argument("--RandFlipd_prob", type=float, default=0.2)
    g.add_argument("--RandRotate90d_prob", type=float, default=0.2)
    g.add_argument("--RandScaleIntensityd_prob", type=float, default=0.1)
    g.add_argument("--RandShiftIntensityd_prob", type=float, default=0.1)
    g.add_argument("--shift_augment", action="store_true",
                   help="scanner-shift augmentation: bias field, gamma, noise, blur, low resolution (MONAI transforms)")
    g.add_argument("--fold", type=int, default=None, help="validation fold: BraTS datalists, nnU-Net raw datasets (default 0)")
    g.add_argument("--use_normal_dataset", action="store_true", help="no caching (plain MONAI Dataset)")
    g.add_argument("--data_check", default="full", choices=["full", "headers"],
                   help="before training, read every image in full (NaN/Inf voxels, truncated data), or only "
                        "the headers of images (faster reruns on a datalist already checked); labels are always read")
    g.add_argument("--cache_dir", default=None, help="cache preprocessed volumes on disk (PersistentDataset) instead of RAM")
    g.add_argument("--cache_rate", type=float, default=1.0, help="share of training volumes cached in RAM")
    g.add_argument("--noamp", action="store_true", help="fp32 training (upstream); same as --amp none")
    g.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="GPU mixed precision (fp16 uses a gradient scaler)")
    add_compile_args(g)
    g.add_argument("--seed", type=int, default=0, help="seed of weights, sampling and augmentation")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower; bit-exact reruns)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the local rank's GPU, else the CPU)")
    g.add_argument("--nan_patience", type=int, default=10, help="stop after this many consecutive non-finite losses")
    g.add_argument("--log_every", type=int, default=20, help="steps between loss read-outs (each one waits for the GPU)")
    d = parser.add_argument_group("distributed")
    d.add_argument("--distributed", action="store_true", help="spawn one process per GPU (or --world_size CPU processes)")
    d.add_argument("--world_size", type=int, default=1, help="GPU: number of nodes; CPU: number of processes")
    d.add_argument("--rank", type=int, default=0, help="this node's index (multi-node --distributed)")
    d.add_argument("--dist-url", dest="dist_url", default=None, help="rendezvous, e.g. tcp://10.0.0.1:23456 (default: a free local port)")
    d.add_argument("--dist-backend", dest="dist_backend", default=None, help="nccl or gloo (default: nccl on GPUs, gloo on CPUs)")


def build_parser(default_task: str) -> argparse.ArgumentParser:
    """The full training parser; ``default_task`` is set by the script's folder."""
    parser = argparse.ArgumentParser(
        description=f"Train Swin-BOB (Swin-UNETR) on {default_task.upper()}", formatter_class=HelpFormatter,
        epilog=presets_epilog(EXIT_CODES),
    )
    add_task_args(parser, default_task)
    add_model_args(parser)
    add_data_args(parser)
    add_train_args(parser)
    return parser


def pretrained_path(args: argparse.Namespace) -> Path | None:
    """The checkpoint to initialise from (fine-tuning), or None to start from scratch."""
    name = args.pretrained_model_name
    if name is None and args.use_ssl_pretrained:
        name = SSL_WEIGHTS_NAME
    if name is None:
        if args.resume_ckpt:
            raise ConfigError("--resume_ckpt needs --pretrained_model_name (and --pretrained_dir)")
        return None
    path = Path(args.pretrained_dir) / name
    if not path.is_file():
        raise ConfigError(f"pretrained checkpoint {path} not found (--pretrained_dir/--pretrained_model_name)")
    return path


def check_trainable_roi(config: ModelConfig) -> None:
    """Refuse ROIs whose bottleneck is a single voxel: instance norm cannot train on it."""
    bottleneck = [r // ROI_MULTIPLE for r in config.roi]
    if config.norm_name == "instance" and all(b == 1 for b in bottleneck):
        raise ConfigError(
            f"--roi_x/--roi_y/--roi_z: ROI {config.roi} leaves a 1x1x1 bottleneck, which instance normalisation cannot "
            "normalise in training; make at least one side 64 (e.g. --roi_z=64) or use --norm_name=batch"
        )


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"--{name} must be positive, got {value}")


def check_task_flags(args: argparse.Namespace, task: Task) -> None:
    """Flags that conflict with the task (:class:`ConfigError`)."""
    if args.bce_weight and task.mode != "regions":
        raise ConfigError(f"--bce_weight applies to region tasks (BraTS), not to {task.name!r}")
    check_trainable_roi(model_config(args, task))
    data_config(args, task)  # e.g. a CT window given to an MRI task


def resolve_plan(args: argparse.Namespace) -> TrainPlan:
    """Fill task defaults into ``args``, check them, read the datalist, and return the plan.

    Raises :class:`~swinbob.errors.ConfigError` (bad flags, before any file is read) or :class:`~swinbob.data.loaders.DatalistError` (bad datalist).
    """
    check_settings(args)
    for name in ("batch_size", "optim_lr", "val_every", "nan_patience", "log_every", "max_steps_per_epoch", "num_samples",
                 "max_epochs"):
        if getattr(args, name) is not None:
            _positive(name, getattr(args, name))
    for name in ("RandFlipd_prob", "RandRotate90d_prob", "RandScaleIntensityd_prob", "RandShiftIntensityd_prob", "cache_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ConfigError(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    preset = None if args.task == AUTO else resolve_task(args)
    if preset is not None:
        check_task_flags(args, preset)
    fold = args.fold if args.fold is not None or args.task != "brats" else 0
    train, val = load_splits(args.json_list, args.data_dir, fold, args.allow_absolute_paths, args.splits)
    task = preset or resolve_task(args, train)
    check_task_flags(args, task)
    model = model_config(args, task)
    data = data_config(
        args, task, num_samples=args.num_samples, flip_prob=args.RandFlipd_prob, rotate90_prob=args.RandRotate90d_prob,
        scale_intensity_prob=args.RandScaleIntensityd_prob, shift_intensity_prob=args.RandShiftIntensityd_prob,
        shift_augment=args.shift_augment,
    )
    logdir = logdir_path(args.logdir, task)
    resume = None if args.resume is None else Path(args.resume or logdir / "last.pt")
    if resume is not None and not resume.is_file() and not previous_checkpoint(resume).is_file():
        raise ConfigError(f"--resume: checkpoint {resume} not found")
    return TrainPlan(
        task=task, model=model, data=data, train_entries=train, val_entries=val, logdir=logdir,
        max_epochs=task.max_epochs if args.max_epochs is None else args.max_epochs,
        val_every=args.val_every or task.val_every,
        lr=args.optim_lr or task.optim_lr,
        weight_decay=task.reg_weight if args.reg_weight is None else args.reg_weight,
        warmup_epochs=task.warmup_epochs if args.warmup_epochs is None else args.warmup_epochs,
        overlap=infer_overlap(args, task),
        amp="none" if args.noamp else args.amp,
        pretrained=None if resume else pretrained_path(args),
        resume=resume,
        options=TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)}),
    )


def record_split(args: argparse.Namespace, logdir: Path) -> None:
    """nnU-Net raw datasets: log the folds the run uses and keep them as ``LOGDIR/splits_final.json``
    (nnU-Net's format: evaluate the same fold later with ``--splits`` pointing there).

    A run folder holding other folds (the dataset's cases changed, another splits file) is refused:
    resuming would validate on cases it trained on.
    """
    split = raw_fold_split(find_datalist(args.json_list, args.data_dir), args.fold, args.splits)
    if split is None:
        return
    target, text = logdir / SPLITS_FILE, splits_text(split)
    if target.is_file() and target.read_text(encoding="utf-8") != text:
        raise ConfigError(f"{target} holds other folds than {split.source}; use another --logdir, or --splits={target}")
    if not target.is_file():
        atomic_write_text(target, text)
    chosen = split.splits[split.fold]
    log.info("fold %d of %s: %d training, %d validation case(s); folds kept in %s", split.fold, split.source,
             len(chosen["train"]), len(chosen["val"]), target)


def main(argv: Sequence[str] | None = None, default_task: str = "ukbob") -> int:
    """Parse upstream-compatible flags, check flags and datalist, and train; returns an exit code."""
    args = build_parser(default_task).parse_args(argv)
    configure_logging()
    try:
        apply_limit_args(args)
        plan = resolve_plan(args)
        for folder, flag in ((plan.logdir, "--logdir"), (args.cache_dir, "--cache_dir")):
            if folder is not None:
                check_writable_folder(folder, flag)
        if os.environ.get("RANK", "0") == "0" and args.rank == 0:
            record_split(args, plan.logdir)
    except (DatalistError, OutputError, ValueError) as exc:
        log.error("%s", exc)
        return engine.EXIT_BAD_DATA
    except (ConfigError, DatasetJsonError, NiftiError) as exc:
        log.error("configuration error: %s", exc)
        return engine.EXIT_BAD_DATA
    run = functools.partial(launch, engine.train_worker, plan, distributed=args.distributed, world_size=args.world_size,
                            node_rank=args.rank, dist_url=args.dist_url, backend=args.dist_backend,
                            device_name=args.device)
    if os.environ.get("RANK", "0") != "0" or args.rank != 0:
        return run()  # only the process that writes the run folder (global rank 0) locks it
    try:
        with folder_lock(plan.logdir, "--logdir"):
            return run()
    except OutputError as exc:
        log.error("%s", exc)
        return engine.EXIT_BAD_DATA


if __name__ == "__main__":  # python -m swinbob.train.cli --task btcv ...
    raise SystemExit(main())
