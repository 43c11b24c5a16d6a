"""Evaluation engine behind ``BTCV/test_etta.py`` and ``BRATS/test_etta.py``.

Per case: preprocess (the training chain: RAS, task spacing, intensity, foreground crop), predict
with a sliding window, optionally adapt with ETTA (:mod:`swinbob.infer.etta`), map the labels back to
the input image's grid with MONAI's inverse transforms, score them against the original label
file (Dice, HD95 in mm), and write predictions, GIFs, ``metrics.csv`` and ``summary.json``.
A case that fails is logged and listed in the summary; the run goes on. Every file is written
atomically and an existing output is kept unless ``overwrite`` is set (``summary.json`` and the
log describe the latest run). The command line (upstream flags plus ETTA, ``--input_dir``,
``--label_map``, ``--compare_etta``) is :mod:`swinbob.infer.cli`; every step is a typed function.

Outputs in ``--output_dir`` (default ``./outputs/<exp_name>``): ``metrics.csv`` (case × method ×
class: Dice, HD95 mm), ``summary.json`` (mean ± std per class and overall per method, failures,
skipped cases, ETTA record per case), ``evaluate.log``, ``predictions/<case>.nii.gz`` (ETTA when
it runs; with ``--compare_etta`` the plain ones in ``predictions_no_etta/``) and ``gifs/<case>.gif``.
"""

from __future__ import annotations

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

from swinbob.data.transforms import DataConfig, eval_transforms
from swinbob.infer.etta import EttaConfig, EttaOutcome, etta_predict
from swinbob.files import (
    atomic_write_text, read_nifti, remove_stale_temp_files, short_name,
    resolve_inside, voxel_spacing,
)
from swinbob.data.inputs import Case, iterate_cases, root_cause
from swinbob.infer.outputs import invert_labels, map_labels, probabilities, to_labels, write_prediction
from swinbob.infer.window import WindowSettings, predict_logits
from swinbob.runtime.interrupt import stop_on_signals
from swinbob.infer.metrics import MetricsLog, json_ready, score_case, summarize
from swinbob.infer.statistics import structure_statistics, write_probabilities
from swinbob.labels import IGNORE_LABEL
from swinbob.tasks import Task
from swinbob.infer.tta import flip_tta_logits
from swinbob.viz import GifSettings, write_gif

log = logging.getLogger(__name__)

NO_ETTA, ETTA = "no_etta", "etta"
EXIT_INTERRUPTED = 4
"""Exit status of a run stopped by SIGTERM/SIGINT between cases (as in training)."""


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
    """``flip``: mirror averaging (:mod:`swinbob.infer.tta`) for the source prediction and ETTA's adapted one."""
    tta_axes: tuple[int, ...] = (0, 1, 2)
    """Spatial axes mirrored by flip TTA (every subset of them is predicted)."""
    label_map: dict[int, int] | None = None
    save_predictions: bool = True
    save_probabilities: bool = False
    statistics: bool = False
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
        return [self.output_dir / f for f in ("", "gifs", "predictions", "predictions_no_etta", "probabilities")]


def output_file(folder: Path, name: str, suffix: str) -> Path:
    """``folder/<name><suffix>`` (a name too long for the file system shortened with a stable hash,
    :func:`~swinbob.files.short_name`); a case name that would land outside ``folder`` is a :class:`CaseError`."""
    try:
        return resolve_inside(folder, short_name(name, suffix))
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
    labels, record, _ = predict_case_outputs(model, image, settings)
    return labels, record


def predict_case_outputs(
    model: torch.nn.Module, image: torch.Tensor, settings: EvalSettings
) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor | None]:
    """:func:`predict_case` plus the primary method's probabilities (C, X, Y, Z) on the preprocessed
    grid when ``settings.save_probabilities`` (ETTA's inside its adapted box), else None."""
    x = image.as_tensor()[None].to(settings.device) if hasattr(image, "as_tensor") else image[None].to(settings.device)
    mode, et_label = settings.task.mode, max(settings.task.regions.get("ET", (3,)))
    order = settings.task.region_labels
    predict = functools.partial(flip_tta_logits, mode=mode, axes=settings.tta_axes) if settings.tta == "flip" else predict_logits
    with torch.no_grad():
        logits = predict(model, x, settings.window)
    source = to_labels(logits[0], mode, et_label, region_labels=order)
    labels = {NO_ETTA: source} if NO_ETTA in settings.methods else {}
    probs = probabilities(logits, mode)[0] if settings.save_probabilities else None
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
            adapted[outcome.box] = to_labels(outcome.probs, mode, et_label, are_logits=False, region_labels=order).to(adapted.device)
            if probs is not None:
                probs[(slice(None), *outcome.box)] = outcome.probs.to(probs.device)
        labels[ETTA] = adapted
        record = {"applied": outcome.applied, "fallback": outcome.fallback, **outcome.info}
    return labels, record, probs


def _check_channels(image: torch.Tensor, expected: int, case: Case) -> None:
    if image.shape[0] != expected:
        raise CaseError(f"image has {image.shape[0]} channel(s) but the model takes {expected} ({', '.join(case.image)})")


def _read_label(case: Case, task: Task, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    label, affine = read_nifti(case.label, ndim=3)
    task.check_label_values(label, source=str(case.label))
    if label.shape != shape:
        raise CaseError(f"label {case.label} has shape {label.shape} but the image has {shape}")
    label = label.astype(np.int16)
    if task.ignore_value is not None:  # a dataset's own ignore label is not scored, like SOLF's 255
        label[label == task.ignore_value] = IGNORE_LABEL
    return label, affine


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
    labels, record, probs = predict_case_outputs(model, image, settings)
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
    if probs is not None:
        path = output_file(settings.output_dir / "probabilities", case.name, ".nii.gz")
        _write_once(path, settings.overwrite, lambda p: write_probabilities(p, probs, image, preprocess, case.image[0],
                                                                     settings.task.mode == "softmax"))
    if settings.statistics:
        shown, affine = _first_channel(case)
        record["statistics"] = structure_statistics(predictions[settings.primary], shown, affine,
                                                    scored_classes(settings.task, settings.label_map))
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

def is_done(case: Case, settings: EvalSettings, with_statistics: frozenset[str] = frozenset()) -> bool:
    """An unlabelled case whose every requested output exists (skipped unless overwrite).

    Every output counts, not the predictions alone: a run killed between a case's prediction and
    its probability map, GIF or ``statistics.json`` record (``with_statistics``: the cases that
    file holds) left the case half done, and the rerun must complete it.
    """
    if settings.overwrite or case.label is not None:
        return False
    try:
        files = [settings.prediction_path(m, case) for m in settings.methods]
        if settings.save_probabilities:
            files.append(output_file(settings.output_dir / "probabilities", case.name, ".nii.gz"))
        if settings.gif is not None:
            files.append(settings.gif_path(case))
    except CaseError:  # reported when the case runs
        return False
    return all(path.exists() for path in files) and (not settings.statistics or case.name in with_statistics)


def read_statistics(path: Path) -> dict[str, Any]:
    """The per-case records of an earlier ``statistics.json`` (empty when there is none or it is unreadable)."""
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): it is rewritten with this run's cases only", path, exc)
        return {}
    if not isinstance(known, dict):
        log.warning("%s is not a JSON object: it is rewritten with this run's cases only", path)
        return {}
    return known


def write_summary(settings: EvalSettings, rows: list[dict], summary: dict) -> None:
    """``summary.json`` (atomically), with mean ± std per method over ``rows``."""
    summary["metrics"] = {m: summarize([r for r in rows if r["method"] == m]) for m in settings.methods if rows}
    atomic_write_text(settings.output_dir / "summary.json", json.dumps(json_ready(summary), indent=2) + "\n")


def run_evaluation(
    model: torch.nn.Module,
    cases: Sequence[Case],
    settings: EvalSettings,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``cases`` with ``model`` (eval mode is set here); returns the summary written to disk.

    ``settings.task`` must have the model's input channels (``Task.with_channels``). Metric rows are
    appended to ``metrics.csv`` case by case; ``summary.json`` is written once, at the end, or when
    the run stops early (SIGTERM/SIGINT between cases, or an exception), then with ``interrupted``.
    """
    model.eval()
    preprocess = eval_transforms(settings.task, settings.data, with_label=False)
    stale = sum(remove_stale_temp_files(folder) for folder in settings.output_folders())
    if stale:
        log.warning("removed %d temporary file(s) left by an interrupted run", stale)
    statistics_path = settings.output_dir / "statistics.json"
    known_statistics = read_statistics(statistics_path) if settings.statistics else {}
    skipped = [c.name for c in cases if is_done(c, settings, frozenset(known_statistics))]
    todo = [c for c in cases if c.name not in set(skipped)]
    for name in skipped:
        log.info("%s: outputs exist, skipped (pass --overwrite to redo)", name)
    summary: dict[str, Any] = {
        **(context or {}), "task": settings.task.name, "methods": list(settings.methods),
        "classes": {k: list(v) for k, v in scored_classes(settings.task, settings.label_map).items()},
        "cases": {"total": len(cases), "evaluated": 0, "failed": 0, "skipped": len(skipped)},
        "failures": [], "skipped": skipped, "etta": {},
    }
    rows: list[dict] = []
    metrics_log = MetricsLog(settings.output_dir / "metrics.csv", redone={c.name for c in todo})
    statistics: dict[str, Any] = {}
    started = time.perf_counter()
    stopped: str | BaseException | None = None
    try:
        with stop_on_signals() as stop:
            for index, item in enumerate(iterate_cases(todo, preprocess, settings.workers), start=1):
                _run_one(model, item, index, len(todo), preprocess, settings, summary, rows, metrics_log, statistics)
                if stop.requested:
                    stopped = stop.name
                    log.warning("%s: stopped after %d of %d case(s); summary.json lists what was done", stop.name,
                                index, len(todo))
                    break
    except BaseException as exc:
        stopped = exc
        raise
    finally:
        metrics_log.close()
        if statistics:  # once, like the summary (per case would be quadratic); merged with the earlier runs' cases
            merged = {**known_statistics, **statistics}
            atomic_write_text(statistics_path, json.dumps(json_ready(merged), indent=2) + "\n")
        summary["elapsed_s"] = round(time.perf_counter() - started, 2)
        if stopped is not None:
            summary["interrupted"] = stopped if isinstance(stopped, str) else (type(stopped).__name__ + f": {stopped}")
        write_summary(settings, rows, summary)
    return summary


def _run_one(model: torch.nn.Module, item: dict, index: int, total: int, preprocess: Compose, settings: EvalSettings,
             summary: dict, rows: list[dict], metrics_log: MetricsLog, statistics: dict[str, Any]) -> None:
    """Evaluate one loaded case (or record its loading error) into ``summary``, ``rows``, the metrics
    log and ``statistics`` (per-structure statistics of the cases that have them)."""
    case, tic = item["case"], time.perf_counter()
    try:
        if "error" in item:
            raise CaseError(item["error"])
        case_rows, record = evaluate_case(model, case, item["image"], preprocess, settings)
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the run
        reason = str(exc) if isinstance(exc, CaseError) else root_cause(exc)
        log.error("[%d/%d] %s FAILED: %s", index, total, case.name, reason)
        summary["failures"].append({"case": case.name, "reason": reason})
        summary["cases"]["failed"] += 1
        return
    rows += case_rows
    metrics_log.append(case_rows)
    if "statistics" in record:
        statistics[case.name] = record.pop("statistics")
    if record:
        summary["etta"][case.name] = record
    summary["cases"]["evaluated"] += 1
    log.info("[%d/%d] %s done in %.1fs%s", index, total, case.name, time.perf_counter() - tic, _brief(case_rows))


def _brief(rows: Sequence[dict]) -> str:
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        dice = [r["dice"] for r in rows if r["method"] == method and np.isfinite(r["dice"])]
        if dice:
            parts.append(f"{method} mean Dice {np.mean(dice):.4f}")
    return f" ({', '.join(parts)})" if parts else ""
