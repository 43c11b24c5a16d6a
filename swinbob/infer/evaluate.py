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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Full, Queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose
from tqdm import tqdm

from swinbob.data.transforms import DataConfig, eval_transforms
from swinbob.infer.etta import EttaConfig, EttaOutcome, etta_predict
from swinbob.infer.selftrain import SelfTrainConfig, selftrain_predict
from swinbob.files import (
    atomic_write_text, read_nifti, remove_stale_temp_files, short_name,
    resolve_inside, voxel_spacing,
)
from swinbob.data.inputs import Case, iterate_cases, root_cause
from swinbob.infer.parts import RECORDS, Journal, Part, journaled_cases, merge_parts, unfinished_parts
from swinbob.infer.outputs import invert_labels, map_labels, probabilities, to_labels, write_prediction
from swinbob.infer.window import WindowSettings, predict_logits
from swinbob.runtime.interrupt import stop_on_signals
from swinbob.infer.metrics import MetricsLog, json_ready, score_case, summarize
from swinbob.infer.statistics import structure_statistics, write_probabilities
from swinbob.labels import IGNORE_LABEL, describe_side_pairs, mirror_permutation
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
    adapt: str = "entropy"
    """What the adaptation step (method ``etta``) runs: ``entropy`` (the paper's ETTA, ``etta``) or
    ``selftrain`` (pseudo-label self-training, :mod:`swinbob.infer.selftrain`, with ``selftrain``)."""
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    tta: str = "none"
    """``flip``: mirror averaging (:mod:`swinbob.infer.tta`) for the source prediction and ETTA's adapted one."""
    tta_axes: tuple[int, ...] = (0, 1, 2)
    """Spatial axes mirrored by flip TTA (every subset of them is predicted)."""
    label_map: dict[int, int] | None = None
    model_labels: dict[int, str] | None = None
    """Names of the model's output channels where they are not the task's: a model from another task
    scored through ``label_map``. Unknown (None) with a ``label_map``: no channel is taken for a side."""
    save_predictions: bool = True
    save_probabilities: bool = False
    statistics: bool = False
    gif: GifSettings | None = None
    overwrite: bool = False
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    overlap: bool = True
    """Read the next case and write the last one's files in threads while the model runs."""
    part: Part | None = None
    """Part of a split run (:mod:`swinbob.infer.parts`): the cases given are this part's; tables go
    to its journal and the folder's tables are merged when every part has ended."""
    case_index: dict[str, int] = field(default_factory=dict)
    """Position of each case in the whole run's input order (a part's merge orders cases by it)."""

    @property
    def side_labels(self) -> dict[int, str]:
        """The model's label names that flip TTA looks for left/right pairs in: the task's own, or
        ``model_labels``; none for region tasks and for a ``label_map`` without ``model_labels``."""
        if self.task.mode != "softmax":
            return {}
        if self.model_labels is not None:
            return self.model_labels
        return self.task.label_map if self.label_map is None else {}

    @property
    def mirror_channels(self) -> tuple[int, ...] | None:
        """Each model output channel's counterpart in a mirror image (flip TTA): the
        left/right pairs of :attr:`side_labels` swapped (:func:`~swinbob.labels.mirror_permutation`)."""
        return mirror_permutation(self.side_labels)

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
    predict = predict_logits
    if settings.tta == "flip":
        predict = functools.partial(flip_tta_logits, mode=mode, axes=settings.tta_axes,
                                    mirror_channels=settings.mirror_channels)
    with torch.no_grad():
        logits = predict(model, x, settings.window)
    source = to_labels(logits[0], mode, et_label, region_labels=order)
    labels = {NO_ETTA: source} if NO_ETTA in settings.methods else {}
    probs = probabilities(logits, mode)[0] if settings.save_probabilities else None
    record: dict[str, Any] = {}
    if ETTA in settings.methods:
        try:
            if settings.adapt == "selftrain":
                outcome = selftrain_predict(model, x, logits, mode, settings.selftrain, settings.window, predict)
            else:
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
    return finish_case(case, image, preprocess, settings, *device_stage(model, case, image, settings))


def device_stage(model: torch.nn.Module, case: Case, image: torch.Tensor,
                 settings: EvalSettings) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor | None]:
    """The part of a case that needs the model (:func:`predict_case_outputs`), outputs on the CPU."""
    _check_channels(image, settings.task.in_channels, case)
    for method in settings.methods:  # refuse a hostile case name before any work
        settings.prediction_path(method, case)
    labels, record, probs = predict_case_outputs(model, image, settings)
    return {m: v.cpu() for m, v in labels.items()}, record, (None if probs is None else probs.cpu())


def finish_case(case: Case, image: torch.Tensor, preprocess: Compose, settings: EvalSettings,
                labels: dict[str, torch.Tensor], record: dict, probs: torch.Tensor | None) -> tuple[list[dict], dict]:
    """The rest of a case, without the model: back to the input grid, score, write files, statistics,
    GIF. Runs in the writer thread while the model predicts the next case."""
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

def is_done(case: Case, settings: EvalSettings, with_statistics: frozenset[str] = frozenset(),
            journaled: set[str] | None = None) -> bool:
    """An unlabelled case whose every requested output exists (skipped unless overwrite).

    Every output counts, not the predictions alone: a run killed between a case's prediction and
    its probability map, GIF or ``statistics.json`` record (``with_statistics``: the cases that
    file holds) left the case half done, and the rerun must complete it. In a part
    (``journaled``: the cases with a journal record) a recorded case is done once its files exist,
    labelled or not: its metric rows and statistics are in the journal.
    """
    if settings.overwrite:
        return False
    recorded = journaled is not None and case.name in journaled
    if case.label is not None and not recorded:
        return False
    try:
        files = [settings.prediction_path(m, case) for m in settings.methods] if case.label is None else []
        if settings.save_probabilities:
            files.append(output_file(settings.output_dir / "probabilities", case.name, ".nii.gz"))
        if settings.gif is not None:
            files.append(settings.gif_path(case))
    except CaseError:  # reported when the case runs
        return False
    return all(path.exists() for path in files) and (recorded or not settings.statistics or case.name in with_statistics)


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
    """``summary.json`` (atomically), with mean ± std per method over ``rows``; a part's in its folder."""
    summary["metrics"] = {m: summarize([r for r in rows if r["method"] == m]) for m in settings.methods if rows}
    folder = settings.output_dir if settings.part is None else settings.part.folder(settings.output_dir)
    atomic_write_text(folder / "summary.json", json.dumps(json_ready(summary), indent=2) + "\n")


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
    part, journal, journaled = settings.part, None, None
    if part is not None:  # only this part's own temporary files: the other parts are writing
        own = {f"{c.name}{suffix}" for c in cases for suffix in (".nii.gz", ".gif")}
        stale = sum(remove_stale_temp_files(folder, own) for folder in settings.output_folders())
        stale += remove_stale_temp_files(part.folder(settings.output_dir))
        (part.folder(settings.output_dir) / "summary.json").unlink(missing_ok=True)  # not ended until it ends again
        journal = Journal(part.folder(settings.output_dir) / RECORDS, reset=settings.overwrite)
        journaled = set() if settings.overwrite else journaled_cases(settings.output_dir)
    else:
        stale = sum(remove_stale_temp_files(folder) for folder in settings.output_folders())
    if stale:
        log.warning("removed %d temporary file(s) left by an interrupted run", stale)
    statistics_path = settings.output_dir / "statistics.json"
    known_statistics = read_statistics(statistics_path) if settings.statistics else {}
    skipped = [c.name for c in cases if is_done(c, settings, frozenset(known_statistics), journaled)]
    todo = [c for c in cases if c.name not in set(skipped)]
    for name in skipped:
        log.info("%s: outputs exist, skipped (pass --overwrite to redo)", name)
    if settings.tta == "flip":
        log.info("flip TTA: left/right channels swapped in mirror images: %s",
                 describe_side_pairs(settings.side_labels))
    summary: dict[str, Any] = {
        **(context or {}), "task": settings.task.name, "methods": list(settings.methods),
        "classes": {k: list(v) for k, v in scored_classes(settings.task, settings.label_map).items()},
        "cases": {"total": len(cases), "evaluated": 0, "failed": 0, "skipped": len(skipped)},
        "failures": [], "skipped": skipped, "etta": {},
    }
    if part is not None:
        summary["part"] = {"index": part.index, "count": part.count,
                           "case_index": {c.name: settings.case_index.get(c.name, i) for i, c in enumerate(cases)}}
    rows: list[dict] = []
    metrics_log = (MetricsLog(settings.output_dir / "metrics.csv", redone={c.name for c in todo}) if part is None
                   else _JournalLog(journal))
    statistics: dict[str, Any] = {}
    started = time.perf_counter()
    stopped: str | BaseException | None = None
    pipeline = Pipeline(len(todo), settings.part.name if settings.part else "cases", threaded=settings.overlap)
    try:
        with stop_on_signals() as stop:
            loaded = iterate_cases(todo, preprocess, settings.workers)
            for index, item in enumerate(loaded if settings.workers or not settings.overlap else prefetch(loaded), start=1):
                _run_one(model, item, index, len(todo), preprocess, settings, summary, rows, metrics_log, statistics,
                         pipeline)
                if stop.requested:
                    pipeline.drain()
                    stopped = stop.name
                    log.warning("%s: stopped after %d of %d case(s); summary.json lists what was done", stop.name,
                                index, len(todo))
                    break
            pipeline.drain()
    except BaseException as exc:
        stopped = exc
        raise
    finally:
        pipeline.close()
        log.info("%s", pipeline.closing_line(summary["cases"], time.perf_counter() - started))
        metrics_log.close()
        if statistics and part is None:  # once, like the summary (per case would be quadratic); merged with the earlier runs' cases
            merged = {**known_statistics, **statistics}
            atomic_write_text(statistics_path, json.dumps(json_ready(merged), indent=2) + "\n")
        summary["elapsed_s"] = round(time.perf_counter() - started, 2)
        if stopped is not None:
            summary["interrupted"] = stopped if isinstance(stopped, str) else (type(stopped).__name__ + f": {stopped}")
        write_summary(settings, rows, summary)
    if part is not None and stopped is None and not unfinished_parts(settings.output_dir, part.count):
        merge_parts(settings.output_dir, part.count)  # the last part to end writes the folder's tables
    return summary


class _JournalLog:
    """A part's metric rows go with its journal records (:class:`_run_one` appends them)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def append(self, rows: Sequence[dict]) -> None:
        pass

    def close(self) -> None:
        self.journal.close()


def _run_one(model: torch.nn.Module, item: dict, index: int, total: int, preprocess: Compose, settings: EvalSettings,
             summary: dict, rows: list[dict], metrics_log: MetricsLog, statistics: dict[str, Any],
             pipeline: Pipeline | None = None) -> None:
    """Evaluate one loaded case (or record its loading error) into ``summary``, ``rows``, the metrics
    log and ``statistics`` (per-structure statistics of the cases that have them). With a
    ``pipeline`` the model's part runs here and the rest in its writer thread; the bookkeeping
    follows when that is done (at the latest when the next case is handed over)."""
    case, tic = item["case"], time.perf_counter()
    pipeline = pipeline or Pipeline(total, threaded=False)
    failed = functools.partial(_record_failure, case, index, total, summary, pipeline)
    try:
        if "error" in item:
            raise CaseError(item["error"])
        outputs = device_stage(model, case, item["image"], settings)
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the run
        failed(exc)
        return
    finally:
        pipeline.model_s += time.perf_counter() - tic
    done = functools.partial(_record_case, case, index, total, tic, summary, rows, metrics_log, statistics, pipeline)
    pipeline.submit(functools.partial(finish_case, case, item["image"], preprocess, settings, *outputs), done, failed)


def _record_failure(case: Case, index: int, total: int, summary: dict, pipeline: Pipeline, exc: BaseException) -> None:
    reason = str(exc) if isinstance(exc, CaseError) else root_cause(exc)
    log.error("[%d/%d] %s FAILED: %s", index, total, case.name, reason)
    summary["failures"].append({"case": case.name, "reason": reason})
    summary["cases"]["failed"] += 1
    pipeline.advance()


def _record_case(case: Case, index: int, total: int, tic: float, summary: dict, rows: list[dict], metrics_log: MetricsLog,
                 statistics: dict[str, Any], pipeline: Pipeline, result: tuple[list[dict], dict]) -> None:
    case_rows, record = result
    rows += case_rows
    metrics_log.append(case_rows)
    if "statistics" in record:
        statistics[case.name] = record.pop("statistics")
    if isinstance(metrics_log, _JournalLog):  # after the case's files: a record means the case is complete
        extra = {"statistics": statistics[case.name]} if case.name in statistics else {}
        metrics_log.journal.append({"case": case.name, "rows": case_rows, **extra, "etta": record})
    if record:
        summary["etta"][case.name] = record
    summary["cases"]["evaluated"] += 1
    pipeline.advance()
    log.info("[%d/%d] %s done in %.1fs%s%s", index, total, case.name, time.perf_counter() - tic, _brief(case_rows),
             pipeline.eta())


class Pipeline:
    """The writer thread of a run and its progress: one case's files are written while the model
    predicts the next one (at most one case waits, so memory stays that of two cases).

    ``submit(work, done, failed)`` runs ``work`` in the thread; ``done(result)`` or ``failed(exc)``
    run in the caller's thread, in case order, when the next case is submitted or at :meth:`drain`.
    Progress: a bar on a terminal (cases done / total, ETA), an ETA on every case's log line, and
    :meth:`closing_line`.
    """

    def __init__(self, total: int, label: str = "cases", threaded: bool = True) -> None:
        self.total, self.count, self.started = total, 0, time.perf_counter()
        self.model_s = 0.0
        """Seconds spent in the model's part of the cases (the rest overlaps with it or waits)."""
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="swinbob-writer") if threaded else None
        self._pending: tuple[Future, Callable, Callable] | None = None
        self._bar = tqdm(total=total, desc=label, unit="case", disable=None if threaded and total else True,
                         dynamic_ncols=True, leave=False)

    def submit(self, work: Callable[[], Any], done: Callable[[Any], None], failed: Callable[[BaseException], None]) -> None:
        if self._pool is None:
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - reported per case
                failed(exc)
                return
            done(result)
            return
        future = self._pool.submit(work)
        self.drain()
        self._pending = (future, done, failed)

    def drain(self) -> None:
        """Wait for the case being written and record it."""
        if self._pending is None:
            return
        (future, done, failed), self._pending = self._pending, None
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - reported per case
            failed(exc)
            return
        done(result)

    def advance(self) -> None:
        self.count += 1
        self._bar.update(1)

    def eta(self) -> str:
        left = self.total - self.count
        if not left or not self.count:
            return ""
        return f", ETA {_duration((time.perf_counter() - self.started) / self.count * left)}"

    def closing_line(self, cases: dict[str, int], elapsed: float) -> str:
        done = cases["evaluated"] + cases["failed"]
        share = f"; model busy {self.model_s:.1f} s = {self.model_s / elapsed:.0%}" if done and elapsed > 0 else ""
        return (f"{cases['evaluated']} case(s) done, {cases['failed']} failed, {cases['skipped']} skipped before, "
                f"in {_duration(elapsed)} ({done / elapsed if elapsed > 0 else 0.0:.3g} cases/s{share})")

    def close(self) -> None:
        """Finish the write in progress (its files land complete) and stop the thread."""
        if self._pool is not None:
            if self._pending is not None:
                self._pending[0].exception()  # wait; recorded or not, its files are complete
            self._pool.shutdown(wait=True)
        self._bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def prefetch(items: Iterator[dict], depth: int = 1) -> Iterator[dict]:
    """``items`` read ahead by a thread (``--workers 0``): the next case loads while this one runs."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(end)
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            queue.put(exc)

    thread = threading.Thread(target=produce, name="swinbob-loader", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _brief(rows: Sequence[dict]) -> str:
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        dice = [r["dice"] for r in rows if r["method"] == method and np.isfinite(r["dice"])]
        if dice:
            parts.append(f"{method} mean Dice {np.mean(dice):.4f}")
    return f" ({', '.join(parts)})" if parts else ""
