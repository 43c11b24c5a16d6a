"""Command-line flags shared by the scripts (upstream-compatible names) and their resolution.

Flags whose default depends on the benchmark (spacing, ROI, CT window, ...) default to ``None``
here and are filled from the :class:`~swinbob.tasks.Task`, so ``--help`` stays honest and one
parser serves UKBOB, BTCV and BraTS.
"""

from __future__ import annotations

import argparse
import dataclasses

from swinbob.data import DataConfig
from swinbob.model import ModelConfig, validate_roi
from swinbob.tasks import Task, get_task


def add_task_args(parser: argparse.ArgumentParser, default_task: str) -> None:
    """``--task`` (set by each script folder) and ``--et_label`` for BraTS 2021 label files."""
    parser.add_argument("--task", default=default_task, choices=["ukbob", "btcv", "brats"], help="benchmark definition")
    parser.add_argument("--et_label", type=int, default=3, choices=[3, 4], help="BraTS enhancing-tumour label: 3 (2023) or 4 (2021)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Swin-UNETR architecture flags (upstream names)."""
    g = parser.add_argument_group("model")
    g.add_argument("--feature_size", type=int, default=48, help="Swin-UNETR embedding size (multiple of 12)")
    g.add_argument("--in_channels", type=int, default=None, help="input channels (default: the task's)")
    g.add_argument("--out_channels", type=int, default=None, help="output channels (default: the task's)")
    g.add_argument("--spatial_dims", type=int, default=3, help="must be 3")
    g.add_argument("--dropout_rate", type=float, default=0.0, help="kept for upstream compatibility (unused by MONAI 1.6)")
    g.add_argument("--dropout_path_rate", type=float, default=0.0, help="stochastic depth rate")
    g.add_argument("--norm_name", default="instance", help="decoder normalisation")
    g.add_argument("--use_checkpoint", action="store_true", help="gradient checkpointing (less memory, ~25%% slower)")
    g.add_argument("--use_v2", action="store_true", help="Swin-UNETR v2 (residual conv blocks in the encoder)")
    for axis in "xyz":
        g.add_argument(f"--roi_{axis}", type=int, default=None, help=f"patch size along {axis} (multiple of 32; default: the task's)")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Data location, resampling and intensity flags (upstream names)."""
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default="./data/", help="folder that datalist paths are relative to")
    g.add_argument("--json_list", default="dataset.json", help="Decathlon datalist (as given, else inside --data_dir)")
    g.add_argument("--allow_absolute_paths", action="store_true", help="accept absolute paths in the datalist")
    g.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    for name in ("a_min", "a_max", "b_min", "b_max"):
        g.add_argument(f"--{name}", type=float, default=None, help="CT intensity window (default: the task's)")
    g.add_argument("--intensity", default=None, choices=["window", "zscore_nonzero", "zscore_foreground"],
                   help="intensity normalisation (default: the task's; zscore_foreground for MRI with a noisy background)")
    for axis in "xyz":
        g.add_argument(f"--space_{axis}", type=float, default=None, help=f"resampled spacing along {axis} in mm (default: the task's)")
    g.add_argument("--infer_overlap", type=float, default=None, help="sliding-window overlap (default: the task's)")
    g.add_argument("--sw_batch_size", type=int, default=4, help="windows per forward pass in sliding-window inference")


def _triplet(args: argparse.Namespace, stem: str, default: tuple) -> tuple:
    values = [getattr(args, f"{stem}_{axis}", None) for axis in "xyz"]
    if all(v is None for v in values):
        return tuple(default)
    if any(v is None for v in values):
        raise SystemExit(f"error: give all of --{stem}_x, --{stem}_y, --{stem}_z or none of them")
    return tuple(values)


def resolve_task(args: argparse.Namespace) -> Task:
    """The task of ``args.task`` with its input channels and output channels checked."""
    task = get_task(args.task, et_label=getattr(args, "et_label", 3))
    if args.in_channels is not None:
        task = task.with_channels(args.in_channels)
    if args.out_channels is not None and args.out_channels != task.out_channels:
        hint = " (TotalVibeSegmentator IDs run to 72, so 73 outputs)" if task.name == "ukbob" else ""
        raise SystemExit(f"error: task {task.name!r} needs --out_channels={task.out_channels}{hint}, got {args.out_channels}")
    return task


def model_config(args: argparse.Namespace, task: Task) -> ModelConfig:
    """Architecture from flags, falling back to the task; the ROI is validated here, early."""
    return ModelConfig.from_task(
        task,
        feature_size=args.feature_size,
        roi=validate_roi(_triplet(args, "roi", task.roi)),
        dropout_path_rate=args.dropout_path_rate,
        use_checkpoint=args.use_checkpoint,
        use_v2=args.use_v2,
        spatial_dims=args.spatial_dims,
        norm_name=args.norm_name,
    )


def data_config(args: argparse.Namespace, task: Task, **overrides: object) -> DataConfig:
    """Spacing, intensity window and ROI from flags, falling back to the task."""
    window = {k: getattr(args, k) for k in ("a_min", "a_max", "b_min", "b_max") if getattr(args, k, None) is not None}
    if getattr(args, "intensity", None):
        window["kind"] = args.intensity
    intensity = dataclasses.replace(task.intensity, **window)
    return DataConfig.from_task(
        task,
        spacing=_triplet(args, "space", task.spacing),
        intensity=intensity,
        roi=_triplet(args, "roi", task.roi),
        **overrides,
    )


def infer_overlap(args: argparse.Namespace, task: Task) -> float:
    """Sliding-window overlap from the flag or the task, checked to lie in [0, 1)."""
    overlap = task.infer_overlap if args.infer_overlap is None else args.infer_overlap
    if not 0.0 <= overlap < 1.0:
        raise SystemExit(f"error: --infer_overlap must be in [0, 1), got {overlap}")
    return overlap
