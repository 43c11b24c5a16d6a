"""Evaluation engine behind ``BTCV/test_etta.py`` and ``BRATS/test_etta.py``.

Per case: preprocess (the training chain: RAS, task spacing, intensity, foreground crop), predict
with a sliding window, optionally adapt with ETTA (:mod:`swinbob.etta`), map the labels back to
the input image's grid with MONAI's inverse transforms, score them against the original label
file (Dice, HD95 in mm), and write predictions, GIFs, ``metrics.csv`` and ``summary.json``.
A case that fails is logged and listed in the summary; the run goes on. Every file is written
atomically and an existing output is kept unless ``overwrite`` is set (``summary.json`` and the
log describe the latest run). :func:`main` is the command line (upstream flags plus ETTA,
``--input_dir``, ``--label_map``, ``--compare_etta``); every step is also a typed function.

Outputs in ``--output_dir`` (default ``./outputs/<exp_name>``): ``metrics.csv`` (case × method ×
class: Dice, HD95 mm), ``summary.json`` (mean ± std per class and overall per method, failures,
skipped cases, ETTA record per case), ``evaluate.log``, ``predictions/<case>.nii.gz`` (ETTA when
it runs; with ``--compare_etta`` the plain ones in ``predictions_no_etta/``) and ``gifs/<case>.gif``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from swinbob import cli, fast
from swinbob.checkpoint import CheckpointError
from swinbob.data import DataConfig, eval_transforms, load_datalist
from swinbob.etta import EttaConfig, EttaOutcome, etta_predict
from swinbob.files import (
    atomic_write_text, read_nifti, remove_stale_temp_files, resolve_inside, voxel_spacing,
)
from swinbob.inference import (
    Case, WindowSettings, datalist_cases, folder_cases, invert_labels, iterate_cases, load_inference_model, map_labels,
    predict_logits, root_cause, to_labels, trained_preprocessing, write_prediction,
)
from swinbob.metrics import json_ready, metrics_csv, score_case, summarize
from swinbob.model import ModelConfig, validate_roi
from swinbob.runtime import autocast_dtype, select_device, seed_everything
from swinbob.tasks import Task, get_task
from swinbob.tta import TTA_CHOICES, flip_tta_logits
from swinbob.viz import GifSettings, write_gif

log = logging.getLogger(__name__)

NO_ETTA, ETTA = "no_etta", "etta"


class CaseError(RuntimeError):
    """A case that cannot be evaluated; the message says why (the run goes on)."""


@dataclass
class EvalSettings:
    """Everything :func:`run_evaluation` needs besides the model and the cases."""

    task: Task
    data: DataConfig
    window: WindowSettings
    output_dir: Path
    methods: tuple[str, ...] = (ETTA,)
    etta: EttaConfig = field(default_factory=EttaConfig)
    tta: str = "none"
    """``flip``: mirror averaging (:mod:`swinbob.tta`) for the source prediction and ETTA's adapted one."""
    tta_axes: tuple[int, ...] = (0, 1, 2)
    """Spatial axes mirrored by flip TTA (every subset of them is predicted)."""
    label_map: dict[int, int] | None = None
    save_predictions: bool = False
    gif: GifSettings | None = None
    overwrite: bool = False
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def primary(self) -> str:
        """The method whose predictions go to ``predictions/`` and GIFs (ETTA when it runs)."""
        return ETTA if ETTA in self.methods else NO_ETTA

    def prediction_path(self, method: str, case: Case) -> Path:
        folder = "predictions" if method == self.primary else f"predictions_{method}"
        return output_file(self.output_dir / folder, case.name, ".nii.gz")

    def gif_path(self, case: Case) -> Path:
        return output_file(self.output_dir / "gifs", case.name, ".gif")

    def output_folders(self) -> list[Path]:
        return [self.output_dir, self.output_dir / "gifs"] + [self.output_dir / f for f in ("predictions", "predictions_no_etta")]


def output_file(folder: Path, name: str, suffix: str) -> Path:
    """``folder/<name><suffix>``; a case name that would land outside ``folder`` is a :class:`CaseError`."""
    try:
        return resolve_inside(folder, f"{name}{suffix}")
    except ValueError as exc:
        raise CaseError(f"case name {name!r} refused: {exc}") from exc


def scored_classes(task: Task, label_map: dict[int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Classes that enter the metrics, as ``name -> label IDs`` of the dataset's label files.

    Regions for BraTS; every used non-background label otherwise; with a ``label_map`` only the
    dataset labels that some model label maps to.
    """
    if task.mode == "regions":
        return {name: tuple(ids) for name, ids in task.regions.items()}
    ids = sorted(set(label_map.values())) if label_map else task.scored_classes
    return {task.label_map.get(i, f"label_{i}"): (i,) for i in ids}


# ----------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------

def predict_case(model: torch.nn.Module, image: torch.Tensor, settings: EvalSettings) -> tuple[dict[str, torch.Tensor], dict]:
    """Labels on the preprocessed grid for each method (model label IDs), and the ETTA record."""
    x = image.as_tensor()[None].to(settings.device) if hasattr(image, "as_tensor") else image[None].to(settings.device)
    mode, et_label = settings.task.mode, max(settings.task.regions.get("ET", (3,)))
    predict = functools.partial(flip_tta_logits, mode=mode, axes=settings.tta_axes) if settings.tta == "flip" else predict_logits
    with torch.no_grad():
        logits = predict(model, x, settings.window)
    source = to_labels(logits[0], mode, et_label)
    labels = {NO_ETTA: source} if NO_ETTA in settings.methods else {}
    record: dict[str, Any] = {}
    if ETTA in settings.methods:
        try:
            outcome = etta_predict(model, x, logits, mode, settings.etta, settings.window, predict)
        except torch.OutOfMemoryError:  # the model is already restored; keep the source prediction
            log.warning("out of memory during ETTA: keeping the source prediction (try fewer --etta_windows)")
            if x.is_cuda:
                torch.cuda.empty_cache()
            outcome = EttaOutcome(fallback="out of memory during adaptation")
        adapted = source.clone()
        if outcome.applied:
            adapted[outcome.box] = to_labels(outcome.probs, mode, et_label, are_logits=False).to(adapted.device)
        labels[ETTA] = adapted
        record = {"applied": outcome.applied, "fallback": outcome.fallback, **outcome.info}
    return labels, record


def _check_channels(image: torch.Tensor, expected: int, case: Case) -> None:
    if image.shape[0] != expected:
        raise CaseError(f"image has {image.shape[0]} channel(s) but the model takes {expected} ({', '.join(case.image)})")


def _read_label(case: Case, task: Task, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    label, affine = read_nifti(case.label, ndim=3)
    task.check_label_values(label, source=str(case.label))
    if label.shape != shape:
        raise CaseError(f"label {case.label} has shape {label.shape} but the image has {shape}")
    return label.astype(np.int16), affine


def _first_channel(case: Case) -> tuple[np.ndarray, np.ndarray]:
    image, affine = read_nifti(case.image[0], ndim=None)
    return (image[..., 0] if image.ndim == 4 else image), affine


def _write_once(path: Path, overwrite: bool, write: Callable[[Path], object]) -> None:
    if path.exists() and not overwrite:
        log.warning("%s exists: kept (pass --overwrite to replace it)", path)
        return
    write(path)


def evaluate_case(
    model: torch.nn.Module, case: Case, image: torch.Tensor, preprocess: Compose, settings: EvalSettings
) -> tuple[list[dict], dict]:
    """Predict, invert, write and score one preprocessed case; returns metric rows and ETTA record."""
    _check_channels(image, settings.task.in_channels, case)
    for method in settings.methods:  # refuse a hostile case name before any work
        settings.prediction_path(method, case)
    labels, record = predict_case(model, image, settings)
    predictions = {}
    for method, grid_labels in labels.items():
        if settings.label_map:
            grid_labels = map_labels(grid_labels.cpu(), settings.label_map)
        predictions[method] = invert_labels(grid_labels, image, preprocess)
    rows: list[dict] = []
    target = None
    if case.label is not None:
        target, affine = _read_label(case, settings.task, predictions[settings.primary].shape)
        classes = scored_classes(settings.task, settings.label_map)
        for method, pred in predictions.items():
            for row in score_case(pred, target, classes, voxel_spacing(affine)):
                rows.append({"case": case.name, "method": method, **row})
    if settings.save_predictions or case.label is None:
        for method, pred in predictions.items():
            path = settings.prediction_path(method, case)
            _write_once(path, settings.overwrite, lambda p, pred=pred: write_prediction(p, pred, case.image[0]))
    if settings.gif is not None:
        shown, affine = _first_channel(case)
        names = dict(settings.task.label_map)
        gif = settings.gif
        _write_once(settings.gif_path(case), settings.overwrite,
                    lambda p: write_gif(p, shown, predictions[settings.primary], target, affine, names, gif))
    return rows, record


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def is_done(case: Case, settings: EvalSettings) -> bool:
    """An unlabelled case whose every prediction file already exists (skipped unless overwrite)."""
    if settings.overwrite or case.label is not None:
        return False
    try:
        return all(settings.prediction_path(m, case).exists() for m in settings.methods)
    except CaseError:  # reported when the case runs
        return False


def write_reports(settings: EvalSettings, rows: list[dict], summary: dict) -> None:
    """``metrics.csv`` (when there are scores) and ``summary.json``, both atomically."""
    if rows:
        atomic_write_text(settings.output_dir / "metrics.csv", metrics_csv(rows))
    summary["metrics"] = {m: summarize([r for r in rows if r["method"] == m]) for m in settings.methods if rows}
    atomic_write_text(settings.output_dir / "summary.json", json.dumps(json_ready(summary), indent=2) + "\n")


def run_evaluation(
    model: torch.nn.Module,
    cases: Sequence[Case],
    settings: EvalSettings,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``cases`` with ``model`` (eval mode is set here); returns the summary written to disk.

    ``settings.task`` must have the model's input channels (``Task.with_channels``).
    """
    model.eval()
    preprocess = eval_transforms(settings.task, settings.data, with_label=False)
    stale = sum(remove_stale_temp_files(folder) for folder in settings.output_folders())
    if stale:
        log.warning("removed %d temporary file(s) left by an interrupted run", stale)
    skipped = [c.name for c in cases if is_done(c, settings)]
    todo = [c for c in cases if c.name not in set(skipped)]
    for name in skipped:
        log.info("%s: predictions exist, skipped (pass --overwrite to redo)", name)
    summary: dict[str, Any] = {
        **(context or {}), "task": settings.task.name, "methods": list(settings.methods),
        "classes": {k: list(v) for k, v in scored_classes(settings.task, settings.label_map).items()},
        "cases": {"total": len(cases), "evaluated": 0, "failed": 0, "skipped": len(skipped)},
        "failures": [], "skipped": skipped, "etta": {},
    }
    rows: list[dict] = []
    started = time.perf_counter()
    for index, item in enumerate(iterate_cases(todo, preprocess, settings.workers), start=1):
        case, tic = item["case"], time.perf_counter()
        try:
            if "error" in item:
                raise CaseError(item["error"])
            case_rows, record = evaluate_case(model, case, item["image"], preprocess, settings)
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the run
            reason = str(exc) if isinstance(exc, CaseError) else root_cause(exc)
            log.error("[%d/%d] %s FAILED: %s", index, len(todo), case.name, reason)
            summary["failures"].append({"case": case.name, "reason": reason})
            summary["cases"]["failed"] += 1
        else:
            rows += case_rows
            if record:
                summary["etta"][case.name] = record
            summary["cases"]["evaluated"] += 1
            log.info("[%d/%d] %s done in %.1fs%s", index, len(todo), case.name, time.perf_counter() - tic, _brief(case_rows))
        summary["elapsed_s"] = round(time.perf_counter() - started, 2)
        write_reports(settings, rows, summary)
    if not todo:
        write_reports(settings, rows, summary)
    return summary


def _brief(rows: Sequence[dict]) -> str:
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        dice = [r["dice"] for r in rows if r["method"] == method and np.isfinite(r["dice"])]
        if dice:
            parts.append(f"{method} mean Dice {np.mean(dice):.4f}")
    return f" ({', '.join(parts)})" if parts else ""


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A wrong setting: nothing is evaluated and the exit status is 2."""


def build_parser(default_task: str) -> argparse.ArgumentParser:
    """Upstream ``test_etta.py`` flags plus ETTA, folder prediction, label mapping and runtime flags."""
    parser = argparse.ArgumentParser(description="Swin-BOB evaluation with entropy test-time adaptation (ETTA)")
    cli.add_task_args(parser, default_task)
    cli.add_model_args(parser)
    cli.add_data_args(parser)
    io_ = parser.add_argument_group("inputs and outputs")
    io_.add_argument("--pretrained_dir", default="./pretrained_models/", help="folder of the checkpoint")
    io_.add_argument("--pretrained_model_name", default="model_final.pt", help="checkpoint file name")
    io_.add_argument("--exp_name", default="test", help="outputs go to ./outputs/<exp_name> unless --output_dir")
    io_.add_argument("--output_dir", default=None, help="output folder (default ./outputs/<exp_name>)")
    io_.add_argument("--split", default="validation", help="datalist split to evaluate")
    io_.add_argument("--fold", type=int, default=None, help="BraTS fold used as the evaluated split")
    io_.add_argument("--input_dir", default=None, help="predict every image in this folder (no labels, no datalist)")
    io_.add_argument("--save_predictions", action="store_true", help="write NIfTI predictions of labelled cases")
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
    adapt.add_argument("--tta", default="none", choices=TTA_CHOICES,
                       help="test-time augmentation: flip = mirror averaging over the 3 spatial axes (8 passes), "
                            "for the source and the ETTA-adapted predictions")
    adapt.add_argument("--etta_collapse", type=float, default=defaults.collapse,
                       help="fall back to the source prediction if the foreground shrinks by more than this fraction")
    run = parser.add_argument_group("runtime")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: GPU if available)")
    run.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="autocast dtype on GPU")
    run.add_argument("--accumulate", default="auto", choices=["auto", "device", "cpu"],
                     help="where window logits are summed (auto: GPU if the volume fits)")
    return parser


def parse_label_map(text: str | None, task: Task, out_channels: int) -> dict[int, int] | None:
    """``--label_map`` (JSON text or a JSON file) checked against the model outputs and the task labels."""
    if not text:
        return None
    try:
        raw = json.loads(Path(text).read_text(encoding="utf-8") if Path(text).is_file() else text)
        mapping = {int(k): int(v) for k, v in raw.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"--label_map must be a JSON object of label IDs, e.g. '{{\"5\": 6}}' ({exc})") from exc
    if task.mode != "softmax":
        raise ConfigError("--label_map applies to softmax tasks only (BraTS predicts regions)")
    bad_model = sorted(k for k in mapping if not 0 < k < out_channels)
    bad_data = sorted(v for v in mapping.values() if v == 0 or v not in task.label_map)
    if bad_model or bad_data or not mapping:
        raise ConfigError(f"--label_map: model IDs must be in 1..{out_channels - 1} (bad: {bad_model}) and dataset "
                          f"IDs non-background labels of task {task.name!r} (bad: {bad_data})")
    return mapping


def _roi(args: argparse.Namespace, default: Sequence[int]) -> tuple[int, int, int]:
    values = [args.roi_x, args.roi_y, args.roi_z]
    if any(v is None for v in values) and any(v is not None for v in values):
        raise ConfigError("give all of --roi_x, --roi_y, --roi_z or none of them")
    return validate_roi(default if values[0] is None else values)


def load_model(args: argparse.Namespace, task: Task) -> tuple[torch.nn.Module, ModelConfig, Path, dict | None]:
    """The network of ``--pretrained_dir/--pretrained_model_name``; the architecture flags are used
    only for checkpoints that do not store their own (upstream format, bare state dicts)."""
    path = Path(args.pretrained_dir) / args.pretrained_model_name
    from_flags = ModelConfig(
        in_channels=args.in_channels or task.in_channels, out_channels=args.out_channels or task.out_channels,
        feature_size=args.feature_size, roi=_roi(args, task.roi), use_checkpoint=args.use_checkpoint,
        use_v2=args.use_v2, norm_name=args.norm_name,
    )
    model, config, stored = load_inference_model(path, from_flags, args.use_checkpoint)
    # Same maths, less time and memory: fused attention and cached shift masks (benchmarks/RESULTS.md).
    fast.accelerate(model, sdpa=True, cached_masks=True)
    if stored is not None and config.feature_size != args.feature_size:
        log.warning("using feature_size %d from the checkpoint (flag says %d)", config.feature_size, args.feature_size)
    return model, config, path, stored


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


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    if args.compare_etta:
        return (NO_ETTA, ETTA)
    return (ETTA,) if args.etta else (NO_ETTA,)


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, list[Case], EvalSettings, dict]:
    """Resolve flags into a loaded model, the cases and the settings; raises :class:`ConfigError`."""
    task = get_task(args.task, et_label=args.et_label)
    model, config, path, stored = load_model(args, task)
    task = trained_preprocessing(task, stored)
    try:
        task = task.with_channels(config.in_channels)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    label_map = parse_label_map(args.label_map, task, config.out_channels)
    if label_map is None and config.out_channels != task.out_channels:
        raise ConfigError(f"the model has {config.out_channels} outputs but task {task.name!r} has {task.out_channels}; "
                          'pass --label_map to score it zero-shot (e.g. UKBOB liver -> BTCV liver: {"5": 6})')
    device = select_device(args.device)
    window = WindowSettings(_roi(args, config.roi), args.sw_batch_size, cli.infer_overlap(args, task),
                            autocast_dtype(device, args.amp), args.accumulate)
    output_dir = Path(args.output_dir) if args.output_dir else Path("./outputs") / args.exp_name
    if args.input_dir:
        cases = folder_cases(args.input_dir, task.channel_names)
    else:
        entries = load_datalist(args.json_list, args.data_dir, split=args.split, fold=args.fold,
                                allow_absolute=args.allow_absolute_paths)
        cases = datalist_cases(entries, task.channel_names)
    if not cases:
        source = args.input_dir or f"split {args.split!r} of {args.json_list}"
        raise ConfigError(f"no cases found in {source}")
    check_unique_names(cases)
    if not args.input_dir and not args.overwrite:
        existing = [p for p in (output_dir / "metrics.csv", output_dir / "summary.json") if p.exists()]
        if existing:
            raise ConfigError(f"{existing[0]} exists: choose another --exp_name/--output_dir or pass --overwrite")
    settings = EvalSettings(
        task=task, data=cli.data_config(args, task), window=window, output_dir=output_dir, methods=_methods(args),
        etta=EttaConfig(args.etta_steps, args.etta_lr, args.etta_windows, args.etta_seed, args.etta_collapse,
                        args.etta_overlap, args.etta_diversity, args.etta_decoder_norms,
                        args.etta_min_entropy, args.etta_sharpness),
        tta=args.tta,
        label_map=label_map, save_predictions=args.save_predictions, overwrite=args.overwrite, workers=args.workers,
        gif=GifSettings(args.gif_frames, args.gif_downsample, args.gif_duration) if args.generate_gifs else None,
        device=device,
    )
    context = {"checkpoint": str(path), "device": str(device), "amp": str(window.amp_dtype), "roi": list(window.roi),
               "overlap": window.overlap, "tta": settings.tta, "etta_config": dataclasses.asdict(settings.etta), "label_map": label_map}
    return model.to(device), cases, settings, context


def _attach_log(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
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
            model, cases, settings, context = setup(args)
        except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
            log.error("configuration error: %s", exc)
            return 2
        except SystemExit as exc:  # cli helpers and select_device exit with a message
            log.error("configuration error: %s", exc.code)
            return 2
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(_attach_log(logging.FileHandler(settings.output_dir / "evaluate.log")))
        log.info("%d case(s), methods %s, device %s -> %s", len(cases), ", ".join(settings.methods), settings.device,
                 settings.output_dir)
        summary = run_evaluation(model, cases, settings, context)
        attempted = summary["cases"]["evaluated"] + summary["cases"]["failed"]
        return 1 if attempted and not summary["cases"]["evaluated"] else 0
    finally:
        for handler in handlers:
            logging.getLogger("swinbob").removeHandler(handler)
            handler.close()
