"""Command-line flags shared by the scripts (upstream-compatible names) and their resolution.

Flags whose default depends on the benchmark (spacing, ROI, CT window, ...) default to ``None``
here and are filled from the :class:`~swinbob.tasks.Task`, so ``--help`` stays honest and one
parser serves UKBOB, BTCV and BraTS.
"""

from __future__ import annotations

import argparse
import dataclasses

from collections.abc import Mapping, Sequence
from typing import Any

from swinbob.data.transforms import DataConfig, find_datalist
from swinbob.data.dataset_task import task_from_dataset
from swinbob.errors import ConfigError
from swinbob.limits import DEFAULTS, HELP, check_environment, set_limit
from swinbob.runtime.fast import COMPILE_CHOICES
from swinbob.model import ModelConfig, validate_roi
from swinbob.tasks import AUTO, TASK_NAMES, Task, describe_presets, get_task


DEFAULT_FEATURE_SIZE = 48
"""Swin-UNETR's (and Swin-BOB's) embedding size."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults (except None/False ones and those the help explains); keep the epilog's lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def presets_epilog(extra: str = "") -> str:
    """``--help`` text listing every task preset with its actual default values."""
    return "task presets (flags override them):\n  " + describe_presets().replace("\n", "\n  ") + (f"\n\n{extra}" if extra else "")


def add_task_args(parser: argparse.ArgumentParser, default_task: str | None) -> None:
    """``--task`` (set by each script folder) and ``--et_label`` for BraTS 2021 label files."""
    parser.add_argument("--task", default=default_task, choices=[*TASK_NAMES, AUTO],
                        help="task preset (values below), or 'auto' to read it from the --json_list dataset.json"
                        + ("" if default_task else "; default: the checkpoint's task"))
    parser.add_argument("--et_label", type=int, default=3, choices=[3, 4], help="BraTS enhancing-tumour label: 3 (2023) or 4 (2021)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Swin-UNETR architecture flags (upstream names)."""
    g = parser.add_argument_group("model")
    g.add_argument("--feature_size", type=int, default=None,
                   help=f"Swin-UNETR embedding size, a multiple of 12 (default: {DEFAULT_FEATURE_SIZE}; evaluation: the checkpoint's)")
    g.add_argument("--in_channels", type=int, default=None, help="input channels (default: the task's)")
    g.add_argument("--out_channels", type=int, default=None, help="output channels (default: the task's)")
    g.add_argument("--spatial_dims", type=int, default=3, help="must be 3")
    g.add_argument("--dropout_rate", type=float, default=0.0, help="kept for upstream compatibility (unused by MONAI 1.6)")
    g.add_argument("--dropout_path_rate", type=float, default=0.0, help="stochastic depth rate")
    g.add_argument("--norm_name", default="instance", help="decoder normalisation")
    g.add_argument("--use_checkpoint", action="store_true", help="gradient checkpointing (less memory, more compute)")
    g.add_argument("--use_v2", action="store_true", help="Swin-UNETR v2 (residual conv blocks in the encoder)")
    for axis in "xyz":
        g.add_argument(f"--roi_{axis}", type=int, default=None, help=f"patch size along {axis} (multiple of 32; default: the task's)")


def sw_batch_value(text: str) -> int | str:
    """``--sw_batch_size`` of evaluation: ``auto`` or an integer (checked by :func:`check_settings`)."""
    return text if text == "auto" else int(text)


def add_compile_args(group: argparse._ArgumentGroup) -> None:
    """``--compile [auto|on|off|cudagraphs]``, ``--no_compile`` and ``--compile_cache`` (see :mod:`swinbob.runtime.fast`)."""
    group.add_argument("--compile", nargs="?", const="on", default="auto", choices=COMPILE_CHOICES,
                       help="torch.compile the model: auto = on a GPU only; --compile alone = on; cudagraphs = "
                            "with CUDA graphs (not measured yet)")
    group.add_argument("--no_compile", dest="compile", action="store_const", const="off", help="same as --compile off")
    group.add_argument("--compile_cache", default=None, metavar="DIR",
                       help="folder of Inductor's compiled kernels, reused by the next run (default: "
                            "$TORCHINDUCTOR_CACHE_DIR, else ~/.cache/swinbob/inductor; none = Inductor's default in /tmp)")


def add_data_args(parser: argparse.ArgumentParser, sw_batch_auto: bool = False) -> None:
    """Data location, resampling and intensity flags (upstream names); ``sw_batch_auto``: the window
    batch defaults to ``auto`` (evaluation: chosen from free GPU memory, 4 on the CPU)."""
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default="./data/", help="folder that datalist paths are relative to")
    g.add_argument("--json_list", default="dataset.json", help="Decathlon datalist or nnU-Net v2 raw dataset.json (as given, else inside --data_dir)")
    g.add_argument("--splits", default=None, metavar="SPLITS_JSON",
                   help="nnU-Net raw dataset: the splits_final.json whose --fold is used (default: the one beside "
                        "dataset.json, else nnU-Net's default 5 folds)")
    g.add_argument("--allow_absolute_paths", action="store_true", help="accept absolute paths in the datalist")
    g.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    for name in ("a_min", "a_max", "b_min", "b_max"):
        g.add_argument(f"--{name}", type=float, default=None, help="CT intensity window (default: the task's)")
    g.add_argument("--intensity", default=None, choices=["window", "zscore_nonzero", "zscore_foreground"],
                   help="intensity normalisation (default: the task's; zscore_foreground for MRI with a noisy background)")
    for axis in "xyz":
        g.add_argument(f"--space_{axis}", type=float, default=None, help=f"resampled spacing along {axis} in mm (default: the task's)")
    g.add_argument("--infer_overlap", type=float, default=None, help="sliding-window overlap (default: the task's)")
    if sw_batch_auto:
        g.add_argument("--sw_batch_size", type=sw_batch_value, default="auto",
                       help="windows per forward pass in sliding-window inference (auto: from free GPU memory, 4 on the CPU)")
    else:
        g.add_argument("--sw_batch_size", type=int, default=4, help="windows per forward pass in sliding-window inference")


def _triplet(args: argparse.Namespace, stem: str, default: tuple) -> tuple:
    values = [getattr(args, f"{stem}_{axis}", None) for axis in "xyz"]
    if all(v is None for v in values):
        return tuple(default)
    if any(v is None for v in values):
        raise ConfigError(f"give all of --{stem}_x, --{stem}_y, --{stem}_z or none of them")
    return tuple(values)


def _window(args: argparse.Namespace) -> dict[str, float]:
    return {k: getattr(args, k) for k in ("a_min", "a_max", "b_min", "b_max") if getattr(args, k, None) is not None}


def check_settings(args: argparse.Namespace) -> None:
    """Refuse wrong model and data flags (:class:`ConfigError` naming the flag) before any file is read."""
    roi = _triplet(args, "roi", (32, 32, 32))
    try:
        validate_roi(roi)
    except ValueError as exc:
        raise ConfigError(f"--roi_x/--roi_y/--roi_z: {exc}") from exc
    if args.feature_size is not None and (args.feature_size <= 0 or args.feature_size % 12):
        raise ConfigError(f"--feature_size must be a positive multiple of 12 (Swin-UNETR heads), got {args.feature_size}")
    if args.spatial_dims != 3:
        raise ConfigError(f"--spatial_dims must be 3 (Swin-BOB is a 3D model), got {args.spatial_dims}")
    for name in ("in_channels", "out_channels", "sw_batch_size"):
        value = getattr(args, name, None)
        if value is not None and value != "auto" and value <= 0:
            raise ConfigError(f"--{name} must be positive, got {value}")
    if getattr(args, "workers", 0) < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    spacing = _triplet(args, "space", (1.0, 1.0, 1.0))
    if any(not s > 0 for s in spacing):
        raise ConfigError(f"--space_x/--space_y/--space_z must be positive, got {spacing}")
    window = _window(args)
    if "a_min" in window and "a_max" in window and not window["a_min"] < window["a_max"]:
        raise ConfigError(f"--a_min must be below --a_max, got {window['a_min']} and {window['a_max']}")
    if args.infer_overlap is not None and not 0.0 <= args.infer_overlap < 1.0:
        raise ConfigError(f"--infer_overlap must be in [0, 1), got {args.infer_overlap}")
    if args.task == AUTO and getattr(args, "et_label", 3) != 3:
        raise ConfigError("--et_label applies to --task brats; with --task auto the labels come from dataset.json")


def auto_task(args: argparse.Namespace, train_entries: Sequence[Mapping[str, Any]] = ()) -> Task:
    """The task of the ``--json_list`` dataset.json; ``train_entries`` give spacing and CT statistics."""
    window = _window(args)
    if window and not {"a_min", "a_max"} <= set(window):
        raise ConfigError("--task auto: give both --a_min and --a_max for a CT window (else it is measured from the data)")
    spacing = _triplet(args, "space", ()) or None
    return task_from_dataset(find_datalist(args.json_list, args.data_dir), train_entries, spacing,
                             {"b_min": 0.0, "b_max": 1.0, **window} if window else None)


def check_channels(task: Task, args: argparse.Namespace) -> Task:
    """``task`` with ``--in_channels``/``--out_channels`` checked against it (:class:`ConfigError`)."""
    if args.in_channels is not None:
        try:
            task = task.with_channels(args.in_channels)
        except ValueError as exc:
            raise ConfigError(f"--in_channels: {exc}") from exc
    if args.out_channels is not None and args.out_channels != task.out_channels:
        hint = " (TotalVibeSegmentator IDs run to 72, so 73 outputs)" if task.name == "ukbob" else ""
        raise ConfigError(f"--out_channels: task {task.name!r} needs {task.out_channels}{hint}, got {args.out_channels}")
    return task


def resolve_task(args: argparse.Namespace, train_entries: Sequence[Mapping[str, Any]] = ()) -> Task:
    """The task of ``args.task`` (a preset, or ``auto`` from the datalist) with its channels checked."""
    if args.task == AUTO:
        task = auto_task(args, train_entries)
    else:
        task = get_task(args.task, et_label=getattr(args, "et_label", 3))
    return check_channels(task, args)


def model_config(args: argparse.Namespace, task: Task) -> ModelConfig:
    """Architecture from flags, falling back to the task; the ROI is validated here, early."""
    return ModelConfig.from_task(
        task,
        feature_size=args.feature_size or DEFAULT_FEATURE_SIZE,
        roi=validate_roi(_triplet(args, "roi", task.roi)),
        dropout_path_rate=args.dropout_path_rate,
        use_checkpoint=args.use_checkpoint,
        use_v2=args.use_v2,
        spatial_dims=args.spatial_dims,
        norm_name=args.norm_name,
    )


def data_config(args: argparse.Namespace, task: Task, **overrides: object) -> DataConfig:
    """Spacing, intensity window and ROI from flags, falling back to the task."""
    window = _window(args)
    kind = getattr(args, "intensity", None) or task.intensity.kind
    if window and kind != "window":
        raise ConfigError(f"--a_min/--a_max/--b_min/--b_max set a CT window, but task {task.name!r} z-scores its "
                          "(MRI) inputs")
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
        raise ConfigError(f"--infer_overlap must be in [0, 1), got {overlap}")
    return overlap


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """``--max_voxels``, ``--max_checkpoint_mb``, ``--max_feature_size``, ``--max_channels``."""
    group = parser.add_argument_group("resource limits for untrusted files")
    for name, default in DEFAULTS.items():
        group.add_argument(f"--{name}", type=int, default=None, help=f"{HELP[name]} (default {default})")


def apply_limit_args(args: argparse.Namespace) -> None:
    """Set every limit given on the command line, then parse the environment's (``ValueError``,
    naming the flag or the variable, for a value that is not a whole number of at least 1)."""
    for name in DEFAULTS:
        value = getattr(args, name, None)
        if value is not None:
            set_limit(name, value)
    check_environment()
