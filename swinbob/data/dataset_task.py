"""``--task auto``: a :class:`~swinbob.tasks.Task` built from a dataset's own ``dataset.json``.

nnU-Net v2 trains any labelled set from its ``dataset.json`` alone; so does Swin-BOB here:

- labels: Decathlon ``{"0": "background", "1": "liver"}`` or nnU-Net v2 ``{"background": 0,
  "liver": 1}``; nnU-Net regions (``"tumor_core": [2, 3]``, with ``regions_class_order``) make a
  sigmoid region task; an ``"ignore"`` label (nnU-Net v2) gives no supervision and no score;
- channels: ``channel_names`` (nnU-Net v2) or ``modality`` (Decathlon), in key order;
- intensity: :func:`modality_intensity` (CT: nnU-Net's clip to the 0.5/99.5 percentiles of the
  training foreground and z-score with its mean/std, or the window given; MRI: z-score);
- spacing: the median voxel spacing of the training images (RAS axes), unless given.

Everything is stored in each checkpoint (:meth:`Task.to_dict`), so evaluation needs no task flags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from swinbob.files import read_bounded_text, read_nifti
from swinbob.limits import limit
from swinbob.labels import IGNORE_LABEL
from swinbob.tasks import Intensity, Task

CT_NAMES = ("ct",)
MAX_CASES_FOR_STATISTICS = 50
"""Cases read for the CT intensity statistics (nnU-Net samples too): enough for stable percentiles."""
VOXELS_PER_CASE = 10_000
"""Foreground voxels sampled per case for the CT intensity statistics (seeded)."""


MAX_NAME_CHARS = 1024
"""Longest label name accepted (file names built from it are shortened: :func:`swinbob.files.safe_name`)."""


class DatasetJsonError(ValueError):
    """A dataset.json that cannot define a task; the message names the file and the field."""


def read_dataset_json(path: str | Path) -> dict[str, Any]:
    """The parsed dataset.json at ``path`` (a :class:`DatasetJsonError` naming it otherwise)."""
    try:
        content = json.loads(read_bounded_text(path, "dataset.json"))
    except (OSError, ValueError) as exc:  # unreadable, too large, not UTF-8, not JSON
        raise DatasetJsonError(f"{path}: cannot read dataset.json ({exc})") from exc
    if not isinstance(content, dict):
        raise DatasetJsonError(f"{path}: dataset.json must hold a JSON object")
    return content


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(value: Any, path: str | Path, what: str, field: str = "labels") -> int:
    """A label value: a non-negative integer (``true``, ``1.5``, ``1e999`` or ``"x"`` are one-line errors)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DatasetJsonError(f"{path}: '{field}': {_shown(what)} {_shown(value)} is not an integer label value")
    try:
        number = int(value)
        exact = number == float(value)
    except (TypeError, ValueError, OverflowError):
        raise DatasetJsonError(f"{path}: '{field}': {_shown(what)} {_shown(value)} is not an integer label value") from None
    if number < 0 or not exact:
        raise DatasetJsonError(f"{path}: '{field}': {_shown(what)} {_shown(value)} is not a non-negative integer")
    return number


def _check_classes(label_map: Mapping[int, str], path: str | Path) -> None:
    """Class IDs become output channels (the largest ID + 1): 255, SOLF's ignore value, is never a class,
    and the largest ID stays within ``--max_channels``, before anything is sized from it."""
    for number, name in label_map.items():
        if not isinstance(name, str) or not name.strip():
            raise DatasetJsonError(f"{path}: 'labels': label {number} has the name {_shown(name)}; names are non-empty text")
        if len(name) > MAX_NAME_CHARS:
            raise DatasetJsonError(f"{path}: 'labels': the name of label {number} has {len(name)} characters "
                                   f"(at most {MAX_NAME_CHARS})")
    if IGNORE_LABEL in label_map:  # a dataset's own ignore value is never a class: parse_labels refuses that first
        raise DatasetJsonError(f"{path}: 'labels': {IGNORE_LABEL} ({_shown(label_map[IGNORE_LABEL])}) is the ignore value "
                               "of cleaned labels and cannot be a class; renumber it")
    if label_map and max(label_map) + 1 > (most := limit("max_channels")):
        raise DatasetJsonError(f"{path}: 'labels': the largest label {max(label_map)} needs {max(label_map) + 1} output "
                               f"channels, more than {most} (--max_channels)")


def parse_labels(content: Mapping[str, Any], path: str | Path = "dataset.json") -> dict[str, Any]:
    """``label_map``, ``regions``, ``region_labels`` and ``ignore_value`` from a ``labels`` field.

    Decathlon keys are IDs (``{"1": "liver"}``); nnU-Net v2 keys are names (``{"liver": 1}``), and
    a list value (``"tumor_core": [2, 3]``) is a region, which makes every foreground label a region.
    """
    labels = content.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetJsonError(f"{path}: 'labels' must be a non-empty object, e.g. {{\"0\": \"background\", \"1\": \"liver\"}}")
    if len(labels) > (most := limit("max_channels")):
        raise DatasetJsonError(f"{path}: 'labels' has {len(labels)} entries, more than {most} (--max_channels)")
    decathlon = all(re.fullmatch(r"\d+", str(k)) for k in labels)
    if decathlon:
        first: dict[str, str] = {}
        for key, name in labels.items():
            if not isinstance(name, str):
                raise DatasetJsonError(f"{path}: 'labels': label {key} has the name {_shown(name)}; Decathlon names are text")
            if name in first:  # the name -> ID table below would keep only the last
                raise DatasetJsonError(f"{path}: 'labels': labels {first[name]} and {key} are both named {_shown(name)}")
            first[name] = str(key)
    named: dict[str, Any] = {str(v): _int(k, path, "ID") for k, v in labels.items()} if decathlon else dict(labels)
    ignore = named.pop("ignore", None)
    ignore_value = None if ignore is None else _int(ignore, path, "ignore")
    regions = {name: ids for name, ids in named.items() if isinstance(ids, (list, tuple))}
    label_map: dict[int, str] = {}
    if regions:
        values = {_int(v, path, name) for name, ids in named.items() for v in (ids if isinstance(ids, (list, tuple)) else [ids])}
        label_map = {v: f"label_{v}" for v in sorted(values)}
        label_map.update({_int(ids, path, name): name for name, ids in named.items() if not isinstance(ids, (list, tuple))})
    else:
        for name, value in named.items():
            number = _int(value, path, name)
            if number in label_map:
                raise DatasetJsonError(f"{path}: 'labels': value {number} used twice ({label_map[number]!r}, {name!r})")
            label_map[number] = name
    if 0 not in label_map:
        raise DatasetJsonError(f"{path}: 'labels' has no background (value 0)")
    if ignore_value is not None and ignore_value in label_map:
        raise DatasetJsonError(f"{path}: 'labels': the ignore value {ignore_value} is also the label {label_map[ignore_value]!r}")
    _check_classes(label_map, path)
    region_sets = {n: tuple(_int(v, path, n) for v in (ids if isinstance(ids, (list, tuple)) else [ids]))
                   for n, ids in named.items() if n != label_map.get(0)} if regions else {}
    order = content.get("regions_class_order") or []  # no default: task_from_dataset requires it for regions
    if not isinstance(order, (list, tuple)):
        raise DatasetJsonError(f"{path}: 'regions_class_order' must be a list of labels, one per region, got {_shown(order)}")
    order = [_int(o, path, "entry", "regions_class_order") for o in order]
    if regions and order and len(order) != len(region_sets):
        raise DatasetJsonError(f"{path}: 'regions_class_order' needs one label per region ({len(region_sets)})")
    return {"label_map": label_map, "regions": region_sets, "region_labels": tuple(order),
            "ignore_value": ignore_value}


def parse_channels(content: Mapping[str, Any], path: str | Path = "dataset.json") -> tuple[str, ...]:
    """Input channel names from ``channel_names`` (nnU-Net v2) or ``modality`` (Decathlon), in key order."""
    channels = content.get("channel_names") or content.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise DatasetJsonError(f"{path}: needs 'channel_names' or 'modality', e.g. {{\"0\": \"MRI\"}}")
    try:
        keys = sorted(channels, key=int)
    except ValueError:
        raise DatasetJsonError(f"{path}: 'channel_names'/'modality' keys must be channel indices 0, 1, ...") from None
    if [int(k) for k in keys] != list(range(len(keys))):
        raise DatasetJsonError(f"{path}: channel indices must run 0..{len(keys) - 1}, got {keys}")
    return tuple(str(channels[k]) for k in keys)


def is_ct(channel_names: Sequence[str]) -> bool:
    """Whether the first channel is CT (Hounsfield units), as nnU-Net decides its normalisation."""
    return bool(channel_names) and channel_names[0].strip().lower() in CT_NAMES


def modality_intensity(channel_names: Sequence[str], window: Mapping[str, float] | None = None) -> Intensity | None:
    """The normalisation of a modality: CT gets a window (``window`` if given, else None: to be
    measured from the data by :func:`ct_intensity`); everything else (MRI) a z-score over an Otsu
    foreground mask after percentile clipping (``zscore_foreground``), which a noisy background
    does not break (benchmarks/RESULTS.md, domain shift on real MRI)."""
    if not is_ct(channel_names):
        return Intensity("zscore_foreground")
    if window:
        return Intensity("window", **window)
    return None


def ct_intensity(entries: Sequence[Mapping[str, Any]], seed: int = 0) -> Intensity:
    """nnU-Net's CT normalisation as a window: clip to the 0.5/99.5 percentiles of the training
    foreground intensities, then z-score with their mean and std (``(x - mean) / std`` maps
    ``[a_min, a_max]`` linearly onto ``[b_min, b_max]``)."""
    rng = np.random.default_rng(seed)
    samples = []
    for entry in list(entries)[:MAX_CASES_FOR_STATISTICS]:
        image_path = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
        image, _ = read_nifti(image_path, ndim=None)
        label, _ = read_nifti(entry["label"], ndim=3)
        image = image[..., 0] if image.ndim == 4 else image
        values = image[(label > 0) & (label != IGNORE_LABEL)]
        if values.size:
            samples.append(rng.choice(values, size=min(values.size, VOXELS_PER_CASE), replace=False))
    if not samples:
        raise DatasetJsonError("CT intensity statistics: no foreground voxel in the training labels")
    values = np.concatenate(samples).astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if not high > low:  # a window of zero width would divide by zero in every scan
        raise DatasetJsonError(f"CT intensity statistics: the training foreground is constant ({low:g}); "
                               "give the window with --a_min/--a_max")
    clipped = np.clip(values, low, high)
    mean, std = float(clipped.mean()), max(float(clipped.std()), 1e-8)
    return Intensity("window", a_min=float(low), a_max=float(high), b_min=(low - mean) / std, b_max=(high - mean) / std)


def median_spacing(entries: Sequence[Mapping[str, Any]]) -> tuple[float, float, float]:
    """Median voxel spacing (mm) of the training images along the RAS axes (headers only)."""
    spacings = []
    for entry in entries:
        image_path = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
        img = nib.load(str(image_path))
        zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
        ras = np.zeros(3)
        for axis, (target, _flip) in enumerate(nib.orientations.io_orientation(img.affine)):
            ras[int(target)] = zooms[axis]
        spacings.append(ras)
    if not spacings:
        raise DatasetJsonError("no training images to measure the spacing from (give --space_x/y/z)")
    return tuple(float(s) for s in np.median(np.stack(spacings), axis=0).round(4))  # type: ignore[return-value]


def task_name(content: Mapping[str, Any]) -> str:
    """A file-system-friendly task name from the dataset's ``name`` (never a preset's name)."""
    name = re.sub(r"[^a-z0-9_]+", "_", str(content.get("name") or "custom").lower()).strip("_") or "custom"
    return name if name not in ("ukbob", "btcv", "brats") else f"custom_{name}"


def task_from_dataset(
    path: str | Path,
    train_entries: Sequence[Mapping[str, Any]] = (),
    spacing: Sequence[float] | None = None,
    window: Mapping[str, float] | None = None,
) -> Task:
    """The task a dataset.json describes; ``train_entries`` (resolved datalist entries) give the
    median spacing and CT statistics when ``spacing``/``window`` are not given."""
    content = read_dataset_json(path)
    labels = parse_labels(content, path)
    if labels["regions"] and not labels["region_labels"]:  # no order is right for every nesting (nnU-Net refuses too)
        raise DatasetJsonError(f"{path}: region labels need 'regions_class_order', the label each region writes "
                               f"(later regions over earlier ones, as nnU-Net), e.g. [1, 2, 3] for {list(labels['regions'])}")
    channels = parse_channels(content, path)
    intensity = modality_intensity(channels, window)
    if intensity is None:
        intensity = ct_intensity(train_entries)
    return Task(
        name=task_name(content),
        channel_names=channels,
        label_map=labels["label_map"],
        mode="regions" if labels["regions"] else "softmax",
        regions=labels["regions"],
        region_labels=labels["region_labels"],
        ignore_value=labels["ignore_value"],
        spacing=tuple(float(s) for s in spacing) if spacing else median_spacing(train_entries),  # type: ignore[arg-type]
        intensity=intensity,
        roi=(96, 96, 96),
        max_epochs=300,
        val_every=5,
        warmup_epochs=10,
    )
