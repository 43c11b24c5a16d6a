"""One :class:`Task` per benchmark: everything that differs between UKBOB, BTCV and BraTS.

Scripts never branch on the benchmark name; they ask the task for channels, label map, output
mode (softmax over label IDs or sigmoid over regions), spacing, intensity handling, ROI and the
reference recipe's default hyper-parameters. Command-line flags override these defaults.
"""

from __future__ import annotations

import dataclasses
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
)


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
        """Inverse of :meth:`to_dict` (also accepts the JSON form, whose label IDs are strings)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["label_map"] = {int(k): str(v) for k, v in known["label_map"].items()}
        known["regions"] = {str(n): tuple(int(i) for i in ids) for n, ids in (known.get("regions") or {}).items()}
        known["intensity"] = Intensity(**known["intensity"])
        for key in ("channel_names", "spacing", "roi", "region_labels"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

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
