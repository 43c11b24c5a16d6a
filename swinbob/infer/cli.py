"""Command line of the evaluation engine (:mod:`swinbob.infer.evaluate`): ``test_etta.py``, ``predict``.

Parses the upstream ``test_etta.py`` flags plus ETTA, flip TTA, folder prediction and label
mapping; resolves the task (the checkpoint's, a preset, or ``--task auto`` from dataset.json),
checks every setting before any image is read (exit 2, one line), loads the model and runs
:func:`swinbob.infer.evaluate.run_evaluation`. Exit codes: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from swinbob import cli
from swinbob.cli import add_limit_args, apply_limit_args

from swinbob.runtime import fast
from swinbob.checkpoint import CheckpointError, load_checkpoint
from swinbob.data.transforms import find_datalist, load_datalist
from swinbob.data.dataset_task import DatasetJsonError, parse_channels, parse_labels, read_dataset_json
from swinbob.infer.etta import OPTIMIZERS, EttaConfig
from swinbob.infer.selftrain import ADAPT_CHOICES, SelfTrainConfig
from swinbob.infer.window import ACCUMULATE_CHOICES
from swinbob.infer.evaluate import ETTA, EXIT_INTERRUPTED, NO_ETTA, EvalSettings, run_evaluation
from swinbob.errors import ConfigError
from swinbob.files import (
    NiftiError, OutputError, check_writable_folder, folder_lock, read_bounded_text,
)
from swinbob.infer.parts import Part, add_part_args, part_from_flags, select_part
from swinbob.infer.model_loading import load_inference_model, stored_config, stored_task, trained_preprocessing
from swinbob.data.inputs import Case, datalist_cases, folder_cases
from swinbob.infer.window import WindowSettings
from swinbob.runtime.logs import formatter
from swinbob.model import ModelConfig, validate_roi
from swinbob.runtime.devices import autocast_dtype, select_device, seed_everything
from swinbob.tasks import AUTO, Task, get_task
from swinbob.infer.tta import TTA_CHOICES
from swinbob.viz import GifSettings

log = logging.getLogger(__name__)


EXIT_CODES = ("exit codes: 0 at least one case evaluated (or all done before); 1 every case failed and none is "
              "done from an earlier run (docs/reruns.md); 2 configuration error (a wrong flag, checkpoint, label map or datalist; nothing evaluated)")


def build_parser(default_task: str) -> argparse.ArgumentParser:
    """Upstream ``test_etta.py`` flags plus ETTA, folder prediction, label mapping and runtime flags.

    ``--task`` defaults to the checkpoint's own task; ``default_task`` (the script's folder) is
    used for checkpoints that do not record one (upstream format, bare state dicts).
    """
    parser = argparse.ArgumentParser(description="Swin-BOB evaluation with entropy test-time adaptation (ETTA)",
                                     formatter_class=cli.HelpFormatter, epilog=cli.presets_epilog(EXIT_CODES))
    cli.add_task_args(parser, None)
    parser.set_defaults(script_task=default_task)
    cli.add_model_args(parser)
    cli.add_data_args(parser, sw_batch_auto=True)
    io_ = parser.add_argument_group("inputs and outputs")
    io_.add_argument("--pretrained_dir", default="./pretrained_models/", help="folder of the checkpoint")
    io_.add_argument("--pretrained_model_name", default="model_final.pt", help="checkpoint file name")
    io_.add_argument("--exp_name", default="test", help="outputs go to ./outputs/<exp_name> unless --output_dir")
    io_.add_argument("--output_dir", default=None, help="output folder (default ./outputs/<exp_name>)")
    io_.add_argument("--split", default="validation", help="datalist split to evaluate (nnU-Net raw dataset: validation or training of --fold, or test = imagesTs)")
    io_.add_argument("--fold", type=int, default=None, help="fold used as the evaluated split (BraTS datalists; nnU-Net raw datasets, default 0)")
    io_.add_argument("--input_dir", default=None, help="predict every image in this folder (no labels, no datalist)")
    io_.add_argument("--save_predictions", dest="save_predictions", action="store_true", default=True,
                     help="write NIfTI predictions (the default; kept for upstream commands)")
    io_.add_argument("--no_save_predictions", dest="save_predictions", action="store_false",
                     help="do not write predictions of labelled cases (unlabelled cases always get theirs)")
    io_.add_argument("--save_probabilities", action="store_true",
                     help="also write class probabilities in each input's space: probabilities/<case>.nii.gz (X,Y,Z,C)")
    io_.add_argument("--statistics", action="store_true",
                     help="write statistics.json: per case and structure volume (ml), voxels, mean intensity, "
                          "components, bounding box")
    io_.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    io_.add_argument("--label_map", default=None, help='JSON (or JSON file) model label -> dataset label, e.g. {"5": 6}')
    gif = parser.add_argument_group("GIFs")
    gif.add_argument("--generate_gifs", action="store_true", help="write one GIF per case")
    gif.add_argument("--gif_frames", type=int, default=60, help="axial slices per GIF, sampled evenly")
    gif.add_argument("--gif_downsample", type=int, default=1, help="spatial stride of the GIF panels")
    gif.add_argument("--gif_duration", type=float, default=0.2, help="seconds per frame")
    adapt = parser.add_argument_group("ETTA")
    adapt.add_argument("--etta", dest="etta", action="store_true", default=True, help="adapt per case (default)")
    adapt.add_argument("--no_etta", dest="etta", action="store_false", help="plain sliding-window inference")
    adapt.add_argument("--compare_etta", action="store_true", help="evaluate with and without ETTA side by side")
    defaults = EttaConfig()
    adapt.add_argument("--etta_steps", type=int, default=defaults.steps, help="Adam steps per case")
    adapt.add_argument("--etta_lr", type=float, default=defaults.lr, help="Adam learning rate")
    adapt.add_argument("--etta_windows", type=int, default=defaults.windows, help="ROI windows per step")
    adapt.add_argument("--etta_overlap", type=float, default=defaults.overlap,
                       help="sliding-window overlap of the adapted prediction (the source one uses --infer_overlap)")
    adapt.add_argument("--etta_seed", type=int, default=defaults.seed, help="seed of the window sampling")
    adapt.add_argument("--etta_diversity", type=float, default=defaults.diversity,
                       help="weight of the marginal-entropy (anti-collapse) term of the ETTA loss")
    adapt.add_argument("--etta_decoder_norms", action=argparse.BooleanOptionalAction, default=defaults.decoder_norms,
                       help="also adapt the decoder's instance norms (given a scale and shift for the episode)")
    adapt.add_argument("--etta_min_entropy", type=float, default=defaults.min_entropy,
                       help="adapt only cases whose source prediction has at least this mean normalised entropy")
    adapt.add_argument("--etta_sharpness", type=float, default=defaults.sharpness,
                       help="integration weights proportional to mean entropy ** -sharpness")
    adapt.add_argument("--etta_states", type=int, nargs="+", default=list(defaults.states), metavar="STEPS",
                       help="InTEnt-style: also predict after these step counts (< --etta_steps) and integrate "
                            "every adapted state with the source, entropy-weighted")
    adapt.add_argument("--etta_optimizer", default=defaults.optimizer, choices=sorted(OPTIMIZERS),
                       help="optimizer of the adaptation steps (sgd: momentum 0.9)")
    adapt.add_argument("--tta", default="none", choices=TTA_CHOICES,
                       help="test-time augmentation: flip = mirror averaging over the 3 spatial axes (8 passes), "
                            "for the source and the ETTA-adapted predictions")
    adapt.add_argument("--etta_collapse", type=float, default=defaults.collapse,
                       help="fall back to the source prediction if the foreground shrinks by more than this fraction")
    add_selftrain_args(parser)
    run = parser.add_argument_group("runtime")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if available)")
    run.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="autocast dtype on GPU")
    cli.add_compile_args(run)
    run.add_argument("--accumulate", default="auto", choices=ACCUMULATE_CHOICES,
                     help="where window logits are summed (auto: GPU if the volume fits)")
    run.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                     help="read the next scan and write the last one's outputs in threads while the model runs")
    add_part_args(run)
    add_limit_args(parser)
    return parser


def add_selftrain_args(parser: argparse.ArgumentParser) -> None:
    """``--tta_adapt`` and the self-training settings (:class:`~swinbob.infer.selftrain.SelfTrainConfig`)."""
    group = parser.add_argument_group("self-training adaptation (--tta_adapt selftrain)")
    group.add_argument("--tta_adapt", default="entropy", choices=ADAPT_CHOICES,
                       help="what adapts each case: entropy = the paper's ETTA (--etta_* flags); selftrain = "
                            "norm layers trained on the source's confident labels under intensity augmentation")
    defaults = SelfTrainConfig()
    group.add_argument("--selftrain_steps", type=int, default=defaults.steps, help="Adam steps per case")
    group.add_argument("--selftrain_lr", type=float, default=defaults.lr, help="Adam learning rate")
    group.add_argument("--selftrain_windows", type=int, default=defaults.windows, help="ROI windows per step")
    group.add_argument("--selftrain_confidence", type=float, default=defaults.confidence,
                       help="teacher probability a voxel needs to be a pseudo-label")
    group.add_argument("--selftrain_augment", type=float, default=defaults.augment,
                       help="strength of the windows' intensity augmentation (0: none)")
    group.add_argument("--selftrain_mix", type=float, default=defaults.mix,
                       help="share of the adapted probabilities in the result (the source has the rest)")
    group.add_argument("--selftrain_max_change", type=float, default=defaults.max_change,
                       help="keep the source if the adapted labels change more than this share of the foreground")
    group.add_argument("--selftrain_decoder_norms", action=argparse.BooleanOptionalAction, default=defaults.decoder_norms,
                       help="also adapt the decoder's instance norms (given a scale and shift for the episode)")


def selftrain_config(args: argparse.Namespace) -> SelfTrainConfig:
    """The self-training settings of the flags; a bad value is a :class:`ConfigError` naming its flag group."""
    try:
        return SelfTrainConfig(steps=args.selftrain_steps, lr=args.selftrain_lr, windows=args.selftrain_windows,
                               seed=args.etta_seed, confidence=args.selftrain_confidence,
                               augment=args.selftrain_augment, mix=args.selftrain_mix,
                               max_change=args.selftrain_max_change, collapse=args.etta_collapse,
                               decoder_norms=args.selftrain_decoder_norms, overlap=args.etta_overlap)
    except ValueError as exc:
        raise ConfigError(f"--selftrain_*: {exc}") from exc


def _label_id(value: Any, what: str) -> int:
    """A label ID from JSON: an integer (or a key text of digits); 6.9, true, 1e999 are refused."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    shown = repr(value) if isinstance(value, float) else json.dumps(value)
    raise ConfigError(f"--label_map: {what} {shown} is not an integer label ID")


def read_label_map_text(text: str) -> str:
    """The JSON of ``--label_map``: the text itself when it looks like JSON (starts with ``{``),
    else the content of the file it names, so that a long inline map is never taken for a file name."""
    if text.lstrip().startswith("{"):
        return text
    try:
        return read_bounded_text(text, "--label_map file")
    except (OSError, ValueError) as exc:  # unreadable, not a regular file, too large, not UTF-8
        raise ConfigError(f"--label_map {text!r} is neither a JSON object nor a readable JSON file "
                          f"({getattr(exc, 'strerror', None) or exc})") from exc


def parse_label_map(text: str | None, task: Task, out_channels: int) -> dict[int, int] | None:
    """``--label_map`` (JSON text or a JSON file) checked against the model outputs and the task labels."""
    if not text:
        return None
    try:
        raw = json.loads(read_label_map_text(text), parse_constant=lambda c: float(c))
    except ValueError as exc:
        raise ConfigError(f"--label_map must be a JSON object of label IDs, e.g. '{{\"5\": 6}}' ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"--label_map must be a JSON object of label IDs, e.g. '{{\"5\": 6}}', got a JSON {type(raw).__name__}")
    mapping = {_label_id(k, "model ID"): _label_id(v, "dataset ID") for k, v in raw.items()}
    if task.mode != "softmax":
        raise ConfigError("--label_map applies to softmax tasks only (BraTS predicts regions)")
    bad_model = sorted(k for k in mapping if not 0 < k < out_channels)
    bad_data = sorted(v for v in mapping.values() if v == 0 or v not in task.label_map)
    if bad_model or bad_data or not mapping:
        raise ConfigError(f"--label_map: model IDs must be in 1..{out_channels - 1} (bad: {bad_model}) and dataset "
                          f"IDs non-background labels of task {task.name!r} (bad: {bad_data})")
    return mapping


def mapped_model_labels(stored: dict[str, Any] | None, label_map: dict[int, int] | None,
                        out_channels: int) -> dict[int, str] | None:
    """The names of the model's output channels when ``label_map`` maps them onto another task's
    labels (flip TTA swaps the channels of their left/right pairs): those of the task the checkpoint
    records, if it has ``out_channels`` softmax outputs; None otherwise, and without a ``label_map``
    (the outputs are then the task's own)."""
    recorded = stored_task(stored) if label_map else None
    if recorded is None or recorded.mode != "softmax" or recorded.out_channels != out_channels:
        return None
    return dict(recorded.label_map)


def _roi(args: argparse.Namespace, default: Sequence[int]) -> tuple[int, int, int]:
    values = [args.roi_x, args.roi_y, args.roi_z]
    if any(v is None for v in values) and any(v is not None for v in values):
        raise ConfigError("give all of --roi_x, --roi_y, --roi_z or none of them")
    return validate_roi(default if values[0] is None else values)


def load_model(
    args: argparse.Namespace, task: Task, checkpoint: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, ModelConfig, Path, dict | None]:
    """The network of ``--pretrained_dir/--pretrained_model_name`` (``checkpoint``: its content, if
    read already); the architecture flags are used only for checkpoints that do not store their
    own (upstream format, bare state dicts)."""
    path = Path(args.pretrained_dir) / args.pretrained_model_name
    from_flags = ModelConfig(
        in_channels=args.in_channels or task.in_channels, out_channels=args.out_channels or task.out_channels,
        feature_size=args.feature_size or cli.DEFAULT_FEATURE_SIZE, roi=_roi(args, task.roi), use_checkpoint=args.use_checkpoint,
        use_v2=args.use_v2, norm_name=args.norm_name,
    )
    model, config, stored = load_inference_model(path, from_flags, args.use_checkpoint, checkpoint)
    # Same maths, less time and memory: fused attention and cached shift masks (benchmarks/RESULTS.md).
    fast.accelerate(model, sdpa=True, cached_masks=True)
    if stored is not None and args.feature_size is not None and config.feature_size != args.feature_size:
        log.warning("using feature_size %d from the checkpoint (flag says %d)", config.feature_size, args.feature_size)
    return model, config, path, stored


def inference_setup(args: argparse.Namespace, model: torch.nn.Module, config: ModelConfig, task: Task,
                    device: torch.device) -> tuple[torch.nn.Module, WindowSettings]:
    """The network to call on ``device`` and the sliding-window settings, from the runtime flags: on a
    GPU by default compiled behind a window batch chosen from free memory, in bf16
    (:func:`swinbob.runtime.fast.inference_net`); on the CPU the eager model, window batch 4, fp32."""
    amp_dtype, roi = autocast_dtype(device, args.amp), _roi(args, config.roi)
    net, sw_batch = fast.inference_net(model, device, roi, config.in_channels, amp_dtype, args.compile,
                                       args.sw_batch_size, args.compile_cache)
    return net, WindowSettings(roi, sw_batch, cli.infer_overlap(args, task), amp_dtype, args.accumulate)


def check_unique_names(cases: Sequence[Case]) -> None:
    """Refuse cases that share a name: their outputs would overwrite each other."""
    by_name: dict[str, list[str]] = {}
    for case in cases:  # named by a file that exists (folder cases hold "<missing ...>" for absent channels)
        by_name.setdefault(case.name, []).append(next((p for p in case.image if not p.startswith("<")), case.image[0]))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        name, paths = next(iter(clashes.items()))
        raise ConfigError(f"{len(clashes)} case name(s) occur more than once, e.g. {name!r}: {', '.join(paths)}; "
                          "outputs are named after the case, so rename the files")


def check_previous_results(output_dir: Path, args: argparse.Namespace) -> None:
    """Refuse to replace the tables of an earlier run unless ``--overwrite`` (checked at start-up
    and again once the folder is locked: another run may have finished in between)."""
    if not args.input_dir and not args.overwrite:
        existing = [p for p in (output_dir / "metrics.csv", output_dir / "summary.json") if p.exists()]
        if existing:
            raise ConfigError(f"{existing[0]} exists: choose another --exp_name/--output_dir or pass --overwrite")


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    if args.compare_etta:
        return (NO_ETTA, ETTA)
    return (ETTA,) if args.etta else (NO_ETTA,)


def _same_labels(a: dict[int, str], b: dict[int, str]) -> bool:
    return {k: v.lower() for k, v in a.items()} == {k: v.lower() for k, v in b.items()}


def check_dataset(task: Task, path: Path, args: argparse.Namespace, strict: bool = False) -> None:
    """Refuse a datalist whose dataset.json declares other labels or channels than the model's task.

    ``strict`` (``--task auto``): the dataset.json must declare both.
    """
    if args.input_dir:
        return
    try:
        json_path = find_datalist(args.json_list, args.data_dir)
        content = read_dataset_json(json_path)
        labels = parse_labels(content, json_path)["label_map"] if strict or "labels" in content else None
        channels = parse_channels(content, json_path) if strict or {"modality", "channel_names"} & set(content) else None
    except (FileNotFoundError, DatasetJsonError):
        if strict:
            raise
        return  # reported (or not needed) when the cases are read
    if labels is not None and not _same_labels(labels, task.label_map):
        raise ConfigError(f"checkpoint {path} was trained for task {task.name!r} with labels {task.label_map} but "
                          f"{json_path} declares {labels}; use the matching checkpoint, or --label_map")
    if channels is not None and len(channels) != task.in_channels:
        raise ConfigError(f"checkpoint {path} takes {task.in_channels} channel(s) {list(task.channel_names)} but "
                          f"{json_path} declares {len(channels)}: {list(channels)}")


def eval_task(args: argparse.Namespace, stored: dict[str, Any] | None, path: Path) -> Task:
    """The task to evaluate: the checkpoint's own (no task flags needed), or the ``--task`` given.
    A stored task is validated before any scan is read (a :class:`CheckpointError` naming ``path``)."""
    try:
        recorded = stored_task(stored)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if args.task is None and recorded is not None and not args.label_map:
        check_dataset(recorded, path, args)
        return recorded
    if args.task == AUTO:
        if recorded is not None:
            check_dataset(recorded, path, args, strict=True)
            return recorded
        entries = load_datalist(args.json_list, args.data_dir, split="training", fold=args.fold,
                                allow_absolute=args.allow_absolute_paths, splits=args.splits)
        return cli.auto_task(args, entries)
    task = get_task(args.task or args.script_task, et_label=args.et_label)
    try:
        return trained_preprocessing(task, stored)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, list[Case], EvalSettings, dict]:
    """Resolve flags into a loaded model, the cases and the settings; raises :class:`ConfigError`."""
    cli.check_settings(args)
    part = part_from_flags(args.num_parts, args.part_id)
    output_dir = Path(args.output_dir) if args.output_dir else Path("./outputs") / args.exp_name
    check_writable_folder(output_dir, "--output_dir")  # before minutes of model loading: read-only, below a file, ...
    path = Path(args.pretrained_dir) / args.pretrained_model_name
    checkpoint = load_checkpoint(path)
    task = eval_task(args, stored_config(checkpoint), path)
    model, config, path, stored = load_model(args, task, checkpoint)
    try:
        task = task.with_channels(config.in_channels)
    except ValueError as exc:
        raise ConfigError(f"checkpoint {path}: {exc}") from exc
    label_map = parse_label_map(args.label_map, task, config.out_channels)
    if label_map is None and config.out_channels != task.out_channels:
        raise ConfigError(f"checkpoint {path} has {config.out_channels} outputs but task {task.name!r} has "
                          f"{task.out_channels} ({', '.join(task.class_names[:6])}{', ...' if task.out_channels > 6 else ''}); "
                          'use the checkpoint trained for this task, or --label_map to score it zero-shot '
                          '(e.g. UKBOB liver -> BTCV liver: {"5": 6})')
    device = _rank_device(args.device)
    if args.input_dir:
        cases = folder_cases(args.input_dir, task.channel_names)
    else:
        entries = load_datalist(args.json_list, args.data_dir, split=args.split, fold=args.fold,
                                allow_absolute=args.allow_absolute_paths, splits=args.splits)
        cases = datalist_cases(entries, task.channel_names)
    if not cases:
        source = args.input_dir or f"split {args.split!r} of {args.json_list}"
        raise ConfigError(f"no cases found in {source}")
    check_unique_names(cases)
    check_previous_results(output_dir, args)
    case_index = {case.name: i for i, case in enumerate(cases)}
    if part is not None:
        cases = [cases[i] for i in select_part([c.name for c in cases], part)]
    model, window = inference_setup(args, model, config, task, device)
    settings = EvalSettings(
        task=task, data=cli.data_config(args, task), window=window, output_dir=output_dir, methods=_methods(args),
        etta=EttaConfig(args.etta_steps, args.etta_lr, args.etta_windows, args.etta_seed, args.etta_collapse,
                        args.etta_overlap, args.etta_diversity, args.etta_decoder_norms,
                        args.etta_min_entropy, args.etta_sharpness, tuple(args.etta_states), args.etta_optimizer),
        adapt=args.tta_adapt, selftrain=selftrain_config(args),
        tta=args.tta,
        label_map=label_map, model_labels=mapped_model_labels(stored, label_map, config.out_channels),
        save_predictions=args.save_predictions, save_probabilities=args.save_probabilities,
        statistics=args.statistics, overwrite=args.overwrite, workers=args.workers,
        gif=GifSettings(args.gif_frames, args.gif_downsample, args.gif_duration) if args.generate_gifs else None,
        device=device, part=part, case_index=case_index, overlap=args.overlap,
    )
    context = {"checkpoint": str(path), "device": str(device), "amp": str(window.amp_dtype), "roi": list(window.roi),
               "sw_batch_size": window.sw_batch_size, "compile": args.compile, "overlap": window.overlap,
               "tta": settings.tta, "etta_config": dataclasses.asdict(settings.etta), "tta_adapt": settings.adapt,
               "selftrain_config": dataclasses.asdict(settings.selftrain),
               "label_map": label_map, "class_names": task.class_names}
    return model, cases, settings, context


def _rank_device(name: str | None) -> torch.device:
    """``--device``; under torchrun a bare ``cuda`` (or no flag) is the rank's own GPU (``LOCAL_RANK``)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = select_device(name, local_rank)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


@contextlib.contextmanager
def output_locks(output_dir: Path, part: Part | None) -> Iterator[Path]:
    """The locks of a run into ``output_dir``; yields the folder of its log. A single process holds
    the folder; a part holds the folder shared with the other parts and its own part alone."""
    if part is None:
        with folder_lock(output_dir, "--output_dir"):
            yield output_dir
        return
    with folder_lock(output_dir, "--output_dir", shared=True), \
            folder_lock(output_dir, f"--output_dir ({part.name})", name=part.lock_name):
        folder = part.folder(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder


def _attach_log(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(formatter())
    logging.getLogger("swinbob").addHandler(handler)
    return handler


def main(argv: Sequence[str] | None = None, default_task: str = "btcv") -> int:
    """``test_etta.py``: 0 when at least one case was evaluated (or all were done), 1 when every
    case failed, 2 for a configuration error (bad flag, checkpoint, label map, empty datalist)."""
    args = build_parser(default_task).parse_args(argv)
    # Print to the console ourselves unless the application already configured logging (no duplicates).
    handlers = [] if logging.getLogger().handlers else [_attach_log(logging.StreamHandler())]
    logging.getLogger("swinbob").setLevel(logging.INFO)
    try:
        try:
            seed_everything(args.etta_seed)
            apply_limit_args(args)
            model, cases, settings, context = setup(args)
        except (ConfigError, CheckpointError, ValueError, OSError, NiftiError) as exc:
            log.error("configuration error: %s", exc)
            return 2
        except SystemExit as exc:  # cli helpers and select_device exit with a message
            log.error("configuration error: %s", exc.code)
            return 2
        try:
            with output_locks(settings.output_dir, settings.part) as log_folder:
                check_previous_results(settings.output_dir, args)
                handlers.append(_attach_log(logging.FileHandler(log_folder / "evaluate.log")))
                log.info("%s%d case(s), methods %s, device %s -> %s", f"{settings.part.name}: " if settings.part else "",
                         len(cases), ", ".join(settings.methods), settings.device, settings.output_dir)
                summary = run_evaluation(model, cases, settings, context)
        except (OutputError, ConfigError) as exc:
            log.error("configuration error: %s", exc)
            return 2
        except OSError as exc:
            log.error("run failed: %s: %s", getattr(exc, "filename", None) or settings.output_dir, exc.strerror or exc)
            return 1
        if "interrupted" in summary:
            return EXIT_INTERRUPTED
        attempted = summary["cases"]["evaluated"] + summary["cases"]["failed"]
        return 1 if attempted and not summary["cases"]["evaluated"] and not summary["cases"]["skipped"] else 0
    finally:
        for handler in handlers:
            logging.getLogger("swinbob").removeHandler(handler)
            handler.close()
