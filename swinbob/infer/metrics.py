"""Segmentation metrics with explicit conventions, and the per-case tables and summaries built on them.

Dice per class: ``2|P∩G| / (|P|+|G|)``; voxels whose ground truth is the ignore value are left out
of both sets. When a class is absent from both prediction and ground truth its Dice is NaN (not
scored) and it is left out of means, as in nnU-Net; absent from one side only gives 0.

HD95 (mm): MONAI's definition, ``monai.metrics.compute_hausdorff_distance(percentile=95)`` with
the voxel spacing: the 95th percentile (linear interpolation, as ``torch.quantile``) of the
distances from every surface voxel of P to the nearest surface voxel of G, the same from G to P,
and the larger of the two (DeepMind's surface-distance takes the larger too; medpy pools both
directions into one percentile instead, which is never larger). A surface voxel is a mask voxel
with a face neighbour outside the mask (outside the array counts as outside), as MONAI's
``get_mask_edges``. Distances use the voxel spacing, so anisotropic grids are in mm; a test
checks the value against MONAI's within 1e-4 mm on random anisotropic masks.
Empty sets (here the project departs from MONAI, which gives NaN / inf): both empty → NaN (not
scored, like Dice); exactly one empty → the diagonal of the volume in mm (the largest distance
possible inside it), so a missed or hallucinated organ is penalised in means instead of silently
dropped (MONAI's inf would make every mean inf), as in the BraTS challenge ranking.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from swinbob.files import atomic_write_text
from swinbob.labels import IGNORE_LABEL

log = logging.getLogger(__name__)

CSV_FIELDS = ("case", "method", "class", "dice", "hd95_mm")
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def label_masks(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Boolean masks (len(classes), ...) for an integer label volume."""
    return torch.stack([labels == c for c in classes])


def dice_from_masks(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Dice per channel for boolean masks of shape (C, ...); NaN where both are empty."""
    pred, target = pred.bool(), target.bool()
    if valid is not None:
        pred, target = pred & valid, target & valid
    dims = tuple(range(1, pred.ndim))
    inter = (pred & target).sum(dims).double()
    total = pred.sum(dims).double() + target.sum(dims).double()
    dice = 2.0 * inter / total.clamp_min(1)
    return torch.where(total > 0, dice, torch.full_like(dice, float("nan"))).float()


def dice_per_class(pred_labels: torch.Tensor, target_labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Dice of each class in ``classes`` between two integer label volumes of the same shape."""
    if pred_labels.shape != target_labels.shape:
        raise ValueError(f"prediction shape {tuple(pred_labels.shape)} differs from label shape {tuple(target_labels.shape)}")
    valid = target_labels != IGNORE_LABEL
    return dice_from_masks(label_masks(pred_labels, classes), label_masks(target_labels, classes), valid)


# ----------------------------------------------------------------------------------------------
# HD95
# ----------------------------------------------------------------------------------------------

def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the volume's diagonal: the HD95 given when exactly one mask is empty."""
    return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)))


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (the array border is outside)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def _crop_around(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, padded by one empty voxel.

    Surface distances only involve voxels inside that box, and the padding keeps "outside the
    array" meaning "outside the mask", so the result equals the whole-volume computation at a
    fraction of the cost (organs are small compared with a CT volume).
    """
    union = pred | target
    coords = np.nonzero(union)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    return np.pad(pred[box], 1), np.pad(target[box], 1)


def surface_distances(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from P's surface voxels to G's surface, and from G's to P's (both non-empty)."""
    pred, target = _crop_around(np.asarray(pred, bool), np.asarray(target, bool))
    pred_surface, target_surface = surface(pred), surface(target)
    sampling = np.asarray(spacing, dtype=np.float64)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_target[pred_surface], to_pred[target_surface]


def hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float], valid: np.ndarray | None = None) -> float:
    """HD95 in mm between two boolean masks (conventions in the module docstring)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    if valid is not None:
        pred, target = pred & valid, target & valid
    has_pred, has_target = bool(pred.any()), bool(target.any())
    if not has_pred and not has_target:
        return float("nan")
    if has_pred != has_target:
        return volume_diagonal(pred.shape, spacing)
    forward, backward = surface_distances(pred, target, spacing)
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


# ----------------------------------------------------------------------------------------------
# Per-case scores and summaries
# ----------------------------------------------------------------------------------------------

def class_mask(labels: np.ndarray, label_ids: Sequence[int]) -> np.ndarray:
    """Voxels whose label is any of ``label_ids`` (one ID for an organ, several for a BraTS region)."""
    if len(label_ids) == 1:
        return labels == label_ids[0]
    return np.isin(labels, np.asarray(label_ids))


def score_case(
    pred_labels: np.ndarray,
    target_labels: np.ndarray,
    classes: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
) -> list[dict[str, object]]:
    """Dice and HD95 (mm) of every class ``name -> label IDs`` for one case in its own space.

    Ground-truth voxels holding the ignore value are excluded from both masks.
    """
    if pred_labels.shape != target_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} differs from label shape {target_labels.shape}")
    valid = target_labels != IGNORE_LABEL
    rows: list[dict[str, object]] = []
    for name, ids in classes.items():
        pred, target = class_mask(pred_labels, ids) & valid, class_mask(target_labels, ids) & valid
        dice = dice_from_masks(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])[0].item()
        rows.append({"class": name, "dice": dice, "hd95_mm": hd95(pred, target, spacing)})
    return rows


def _mean_std(values: Iterable[float]) -> dict[str, float | int | None]:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def summarize(rows: Sequence[Mapping[str, object]], metrics: Sequence[str] = ("dice", "hd95_mm")) -> dict[str, dict]:
    """Mean ± std (population std, NaN skipped) per class and overall, for rows of one method.

    ``rows`` are :func:`score_case` rows with a ``case`` key. "overall" first averages each case
    over its scored classes and then takes mean ± std over cases, so every case weighs the same
    whatever the number of organs present in it.
    """
    by_class: dict[str, list] = {}
    by_case: dict[str, list] = {}
    for r in rows:  # one pass: linear in the number of rows, however many cases
        by_class.setdefault(str(r["class"]), []).append(r)
        by_case.setdefault(str(r["case"]), []).append(r)
    out: dict[str, dict] = {}
    for metric in metrics:
        per_class = {c: _mean_std(float(r[metric]) for r in group) for c, group in by_class.items()}
        case_means = []
        for group in by_case.values():
            values = [float(r[metric]) for r in group if np.isfinite(float(r[metric]))]
            if values:
                case_means.append(float(np.mean(values)))
        out[metric] = {"per_class": per_class, "overall": _mean_std(case_means)}
    return out


def metrics_csv(rows: Sequence[Mapping[str, object]], header: bool = True) -> str:
    """``case,method,class,dice,hd95_mm`` lines (6 significant digits; ``nan`` = not scored);
    without ``header`` the rows only (appended per case by the evaluation)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in CSV_FIELDS})
    return buffer.getvalue()


def json_ready(value: Any) -> Any:
    """``value`` with NaN/Inf floats as None and tuples as lists, so that ``json.dumps`` writes strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


class MetricsLog:
    """``metrics.csv`` written append-only: the header once, then each case's rows as it finishes.

    Each case costs one append and one flush, so bookkeeping stays linear in the number of cases
    (rewriting the whole table after every case was quadratic: 8,000 entries took minutes). An
    interrupted run leaves the rows of every finished case. Rows an earlier run wrote for cases
    not in ``redone`` are kept (a rerun on part of a folder must not drop the others' scores).
    """

    def __init__(self, path: Path, redone: Collection[str] = ()) -> None:
        self.path = path
        self.redone = set(redone)
        self._handle = None

    def _kept_rows(self) -> str:
        try:
            with open(self.path, encoding="utf-8", newline="") as handle:
                reader = csv.reader(handle)
                if next(reader, None) != list(CSV_FIELDS):
                    return ""
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerows(row for row in reader if row and row[0] not in self.redone)
                return buffer.getvalue()
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.warning("%s is unreadable (%s): it is rewritten with this run's cases only", self.path, exc)
            return ""

    def append(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, metrics_csv([]) + self._kept_rows())
            self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write(metrics_csv(rows, header=False))
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
