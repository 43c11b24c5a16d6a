"""One :class:`Task` per benchmark: everything that differs between UKBOB, BTCV and BraTS.

Scripts never branch on the benchmark name; they ask the task for channels, label map, output
mode (softmax over label IDs or sigmoid over regions), spacing, intensity handling, ROI and the
reference recipe's default hyper-parameters. Command-line flags override these defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from swinbob.labels import (
    BRATS_LABELS_2021,
    BRATS_LABELS_2023,
    BTCV_LABELS,
    IGNORE_LABEL,
    TOTALVIBE_LABELS,
    brats_regions,
    mirror_permutation,
)
from swinbob.limits import limit

INTENSITY_KINDS = ("window", "zscore_nonzero", "zscore_foreground")
SPACING_RANGE_MM = (0.01, 100.0)
"""Voxel spacings a task may resample to: 10 µm (micro-CT) to 10 cm; anything else is a corrupt task."""
MAX_NAME_CHARS = 1024
"""Longest task, channel or label name (file names built from names are shortened separately)."""
MAX_ROI = 1024


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object, what: str) -> int:
    """An integer from a stored int or its JSON text form (``"3"``); ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise ValueError(f"{what} {str(value)[:40]!r} is not a whole number")
    return int(value)


class LabelValueError(ValueError):
    """A label volume holds a value that the task cannot represent."""


@dataclass(frozen=True)
class Intensity:
    """How raw intensities become network inputs.

    ``window``: clip ``[a_min, a_max]`` and map linearly to ``[b_min, b_max]`` (CT, Hounsfield units).
    ``zscore_nonzero``: per channel, subtract the mean and divide by the std of non-zero voxels (MRI).
    ``zscore_foreground``: per channel, a foreground mask from Otsu's threshold, clipping to its
    ``low_pct``..``high_pct`` percentiles, then the mean and std of the clipped foreground (MRI whose
    background is noisy: "non-zero" is then every voxel, and noise or outliers skew the statistics).
    """

    kind: Literal["window", "zscore_nonzero", "zscore_foreground"]
    a_min: float = -175.0
    a_max: float = 250.0
    b_min: float = 0.0
    b_max: float = 1.0
    low_pct: float = 0.5
    high_pct: float = 99.5

    def check(self) -> None:
        """``ValueError`` for an unknown kind, a non-finite or empty window, or percentiles outside 0..100."""
        if self.kind not in INTENSITY_KINDS:
            raise ValueError(f"intensity kind {str(self.kind)[:40]!r} is not one of {', '.join(INTENSITY_KINDS)}")
        values = (self.a_min, self.a_max, self.b_min, self.b_max, self.low_pct, self.high_pct)
        if not all(_is_number(v) for v in values):
            raise ValueError(f"intensity window {[str(v)[:20] for v in values]} must hold finite numbers")
        if self.a_min >= self.a_max or self.b_min == self.b_max:
            raise ValueError(f"intensity window [{self.a_min:g}, {self.a_max:g}] -> [{self.b_min:g}, {self.b_max:g}] is empty")
        if not 0 <= self.low_pct < self.high_pct <= 100:
            raise ValueError(f"intensity percentiles {self.low_pct:g}..{self.high_pct:g} are not within 0..100")


@dataclass(frozen=True)
class Task:
    """A benchmark's data contract and reference-recipe defaults (plain types only)."""

    name: str
    channel_names: tuple[str, ...]
    label_map: dict[int, str]
    mode: Literal["softmax", "regions"]
    spacing: tuple[float, float, float]
    intensity: Intensity
    roi: tuple[int, int, int] = (96, 96, 96)
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    crop_foreground: bool = True
    max_epochs: int = 5000
    val_every: int = 100
    optim_lr: float = 1e-4
    reg_weight: float = 1e-5
    warmup_epochs: int = 50
    infer_overlap: float = 0.5
    num_samples: int = 4
    region_labels: tuple[int, ...] = ()
    """Region tasks: the label written for each region, regions applied in order (nnU-Net's
    ``regions_class_order``); empty for BraTS, whose TC/WT/ET nesting has its own rule."""
    ignore_value: int | None = None
    """A dataset's own ignore label (nnU-Net v2 ``"ignore"``), mapped to :data:`IGNORE_LABEL` on loading."""

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def out_channels(self) -> int:
        """Softmax tasks predict one channel per label ID (0..max); region tasks one per region."""
        if self.mode == "regions":
            return len(self.regions)
        return max(self.label_map) + 1

    @property
    def class_names(self) -> list[str]:
        """Names of the output channels, in channel order (background included for softmax)."""
        if self.mode == "regions":
            return list(self.regions)
        return [self.label_map.get(i, f"label_{i}") for i in range(self.out_channels)]

    @property
    def scored_classes(self) -> list[int]:
        """Output channels that enter Dice: every region, or every used label except background."""
        if self.mode == "regions":
            return list(range(len(self.regions)))
        return [i for i in sorted(self.label_map) if i != 0 and self.label_map[i] != "unused"]

    @property
    def mirror_channels(self) -> tuple[int, ...] | None:
        """Softmax tasks: what each label value (output channel) becomes in a mirror image,
        the two of every left/right pair named in ``label_map`` swapped
        (:func:`~swinbob.labels.mirror_permutation`); None without such pairs and for region tasks,
        whose regions (BraTS's TC/WT/ET) have no side."""
        return mirror_permutation(self.label_map) if self.mode == "softmax" else None

    @property
    def valid_label_values(self) -> frozenset[int]:
        """Label values a ground-truth file may hold: the map's IDs plus the ignore value."""
        extra = {IGNORE_LABEL} if self.ignore_value is None else {IGNORE_LABEL, self.ignore_value}
        return frozenset(self.label_map) | extra

    def to_dict(self) -> dict[str, Any]:
        """Plain types for checkpoints and config.json (label IDs as keys stay ints)."""
        data = dataclasses.asdict(self)
        data["regions"] = {name: list(ids) for name, ids in self.regions.items()}
        for key in ("channel_names", "spacing", "roi", "region_labels"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Inverse of :meth:`to_dict` (also accepts the JSON form, whose label IDs are strings),
        validated by :meth:`check` (``ValueError`` naming the field)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if len(known.get("label_map") or {}) > limit("max_channels"):
            raise ValueError(f"label_map has {len(known['label_map'])} labels, more than {limit('max_channels')} (--max_channels)")
        known["label_map"] = {_whole(k, "label_map ID"): v for k, v in known["label_map"].items()}
        known["regions"] = {str(n): tuple(_whole(i, f"region {n!r} ID") for i in ids)
                            for n, ids in (known.get("regions") or {}).items()}
        known["intensity"] = Intensity(**known["intensity"])
        for key in ("channel_names", "spacing", "roi", "region_labels"):
            if key in known:
                known[key] = tuple(known[key])
        task = cls(**known)
        task.check()
        return task

    def check(self) -> None:
        """Refuse a task no run could have been trained with (a tampered or corrupt checkpoint): known
        intensity kind and mode, finite windows, spacings in :data:`SPACING_RANGE_MM`, label IDs below
        the ignore value and channel counts within ``--max_channels``, before anything is sized from it."""
        most = limit("max_channels")
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_NAME_CHARS:
            raise ValueError(f"name {str(self.name)[:40]!r} is not a name")
        names = [*self.channel_names, *self.label_map.values(), *self.regions]
        if not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names):
            raise ValueError(f"channel, label and region names must be text of 1..{MAX_NAME_CHARS} characters")
        if not 1 <= len(self.channel_names) <= most:
            raise ValueError(f"{len(self.channel_names)} input channels, not within 1..{most} (--max_channels)")
        if self.mode not in ("softmax", "regions"):
            raise ValueError(f"mode {str(self.mode)[:40]!r} is not softmax or regions")
        if not self.label_map or 0 not in self.label_map or min(self.label_map) < 0:
            raise ValueError("label_map needs background 0 and non-negative IDs")
        if IGNORE_LABEL in self.label_map:
            raise ValueError(f"label ID {IGNORE_LABEL} is the ignore value and cannot be a class")
        if max(self.label_map) + 1 > most:
            raise ValueError(f"the largest label ID {max(self.label_map)} needs more than {most} output channels (--max_channels)")
        if self.mode == "regions":
            if not 1 <= len(self.regions) <= most:
                raise ValueError(f"{len(self.regions)} regions, not within 1..{most} (--max_channels)")
            if any(i not in self.label_map for ids in self.regions.values() for i in ids) or \
                    any(i not in self.label_map for i in self.region_labels):
                raise ValueError("region IDs and region_labels must be IDs of label_map")
        if self.ignore_value is not None and not (isinstance(self.ignore_value, int) and 0 <= self.ignore_value <= 65535):
            raise ValueError(f"ignore_value {str(self.ignore_value)[:40]!r} is not a label value")
        low, high = SPACING_RANGE_MM
        if len(self.spacing) != 3 or not all(_is_number(s) and low <= s <= high for s in self.spacing):
            raise ValueError(f"spacing {list(self.spacing)[:4]} must be 3 spacings within {low:g}..{high:g} mm")
        if len(self.roi) != 3 or not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= MAX_ROI for r in self.roi):
            raise ValueError(f"roi {list(self.roi)[:4]} must be 3 sizes within 1..{MAX_ROI}")
        if not (_is_number(self.infer_overlap) and 0 <= self.infer_overlap < 1):
            raise ValueError(f"infer_overlap {self.infer_overlap!r} is not within [0, 1)")
        self.intensity.check()

    def with_channels(self, in_channels: int) -> Task:
        """The same task with ``in_channels`` inputs (UKBOB runs on 1 or 4 Dixon channels)."""
        if in_channels == self.in_channels:
            return self
        if self.name == "ukbob" and in_channels == 1:
            return dataclasses.replace(self, channel_names=("water",))
        raise ValueError(f"task {self.name!r} takes {self.in_channels} input channel(s), not {in_channels}")

    def check_label_values(self, values: np.ndarray, source: str) -> None:
        """Raise :class:`LabelValueError` naming ``source`` if ``values`` has unrepresentable labels."""
        values = np.asarray(values)
        if values.size and values.dtype.kind == "f":
            if not np.all(np.isfinite(values)):
                raise LabelValueError(f"{source}: label volume contains NaN or Inf")
            if np.any(values != np.round(values)):
                bad = values[values != np.round(values)].flat[0]
                raise LabelValueError(f"{source}: label volume holds non-integer value {bad}")
        unique = np.unique(values).astype(np.int64)
        bad = sorted(set(unique.tolist()) - self.valid_label_values)
        if bad:
            allowed = f"{min(self.label_map)}..{max(self.label_map)}"
            raise LabelValueError(
                f"{source}: label value(s) {bad[:10]} cannot be represented by task {self.name!r} "
                f"(allowed: {allowed} and the ignore value {IGNORE_LABEL})"
            )


def _ukbob() -> Task:
    return Task(
        name="ukbob",
        channel_names=("fat", "in_phase", "opposed_phase", "water"),
        label_map=dict(TOTALVIBE_LABELS),
        mode="softmax",
        spacing=(2.0, 2.0, 3.0),
        intensity=Intensity("zscore_nonzero"),
        max_epochs=300,
        val_every=5,
        warmup_epochs=10,
    )


def _btcv() -> Task:
    return Task(
        name="btcv",
        channel_names=("CT",),
        label_map=dict(BTCV_LABELS),
        mode="softmax",
        spacing=(1.5, 1.5, 2.0),
        intensity=Intensity("window", a_min=-175.0, a_max=250.0, b_min=0.0, b_max=1.0),
    )


def _brats(et_label: int = 3) -> Task:
    return Task(
        name="brats",
        channel_names=("t1n", "t1c", "t2w", "t2f"),
        label_map=dict(BRATS_LABELS_2023 if et_label == 3 else BRATS_LABELS_2021),
        mode="regions",
        regions=brats_regions(et_label),
        spacing=(1.0, 1.0, 1.0),
        intensity=Intensity("zscore_nonzero"),
        roi=(128, 128, 128),
        max_epochs=300,
        val_every=10,
        warmup_epochs=50,
        infer_overlap=0.6,
        num_samples=1,
    )


TASK_NAMES = ("ukbob", "btcv", "brats")
UKBOB_CHANNELS = _ukbob().channel_names
"""UKBOB's Dixon images in the model's input order (SOLF's default, the phantoms'): the preset is the one source."""
BTCV_CHANNELS = _btcv().channel_names
BRATS_CHANNELS = _brats().channel_names
AUTO = "auto"
"""``--task auto``: the task is read from the datalist's dataset.json (:mod:`swinbob.data.dataset_task`)."""


def describe_presets() -> str:
    """One line per preset with its actual defaults, for ``--help``."""
    lines = []
    for name in TASK_NAMES:
        t = get_task(name)
        window = (f"CT window {t.intensity.a_min:g}..{t.intensity.a_max:g} -> {t.intensity.b_min:g}..{t.intensity.b_max:g}"
                  if t.intensity.kind == "window" else "z-score (non-zero voxels)")
        lines.append(
            f"{name}: {t.in_channels} channel(s) {'/'.join(t.channel_names)}, {t.out_channels} outputs ({t.mode}), "
            f"spacing {'/'.join(f'{s:g}' for s in t.spacing)} mm, ROI {'x'.join(map(str, t.roi))}, {window}, "
            f"lr {t.optim_lr:g}, {t.max_epochs} epochs (validate every {t.val_every}, warm-up {t.warmup_epochs}), "
            f"{t.num_samples} crops per volume, overlap {t.infer_overlap:g}"
        )
    lines.append(f"{AUTO}: everything from the --json_list dataset.json (labels, channels; spacing = median of the "
                 "training images; CT: clip to the training foreground's 0.5/99.5 percentiles and z-score, MRI: z-score)")
    return "\n".join(lines)


def get_task(name: str, et_label: int = 3) -> Task:
    """The task called ``name`` (case-insensitive); ``et_label`` selects BraTS 2023 (3) or 2021 (4)."""
    key = name.lower()
    if key == "ukbob":
        return _ukbob()
    if key == "btcv":
        return _btcv()
    if key == "brats":
        return _brats(et_label)
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
