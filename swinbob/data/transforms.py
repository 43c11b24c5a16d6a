"""Datalists and MONAI transforms shared by training, validation and inference.

Preprocessing is the same deterministic chain everywhere (load, channel first, orientation to
RAS, resampling to the task spacing, intensity normalisation, foreground crop, labels to regions
for region tasks) so that a model sees at test time exactly what it saw in training, and so that
MONAI's inverse transforms can map predictions back to each input's own space.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as T
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.utils import TraceKeys

from swinbob.data.nnunet_raw import is_raw_dataset, raw_entries
from swinbob.files import (
    NiftiError, check_finite, check_resampled_size, load_nifti_header, nifti_stem, read_bounded_text, resolve_inside,
)
from swinbob.labels import IGNORE_LABEL
from swinbob.tasks import Intensity, Task


@dataclass(frozen=True)
class DataConfig:
    """Data settings resolved from the task defaults and the command line."""

    spacing: tuple[float, float, float]
    intensity: Intensity
    roi: tuple[int, int, int]
    num_samples: int = 4
    flip_prob: float = 0.2
    rotate90_prob: float = 0.2
    scale_intensity_prob: float = 0.1
    shift_intensity_prob: float = 0.1
    shift_augment: bool = False
    """Scanner-shift augmentation (:func:`shift_augment_transforms`) after the reference augmentations."""

    @classmethod
    def from_task(cls, task: Task, **overrides: Any) -> DataConfig:
        fields = {"spacing": task.spacing, "intensity": task.intensity, "roi": task.roi, "num_samples": task.num_samples}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


# ----------------------------------------------------------------------------------------------
# Datalists
# ----------------------------------------------------------------------------------------------

def find_datalist(json_list: str | os.PathLike, data_dir: str | os.PathLike) -> Path:
    """Locate the datalist: as given, else inside ``data_dir`` (the upstream scripts join them)."""
    as_given = Path(json_list)
    if as_given.is_file():
        return as_given
    joined = Path(data_dir) / json_list
    if joined.is_file():
        return joined
    raise FileNotFoundError(f"datalist {json_list} not found (also looked for {joined})")


def _resolve_entry(entry: Mapping[str, Any], data_dir: Path, allow_absolute: bool) -> dict[str, Any]:
    """``entry`` with its ``image`` and ``label`` paths resolved inside ``data_dir`` (see
    :func:`~swinbob.files.resolve_inside`); anything but a path string or a non-empty list of
    them is refused, so that a malformed datalist fails here with a message, not deep in MONAI."""
    out = dict(entry)
    for key in ("image", "label"):
        if key not in entry:
            continue
        value = entry[key]
        many = isinstance(value, (list, tuple))
        values = list(value) if many else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"'{key}' must be a path or a non-empty list of paths, got {value!r}")
        resolved = [str(resolve_inside(data_dir, v, allow_absolute)) for v in values]
        out[key] = resolved if many else resolved[0]
    return out


def _entry_fold(entry: Mapping[str, Any], path: Path) -> int:
    """The entry's ``"fold"`` as an integer; anything else (null, "one", 1.5, true) is refused."""
    fold = entry["fold"]
    if isinstance(fold, bool) or not isinstance(fold, int):
        raise ValueError(f"datalist {path}: entry {entry.get('image')!r} has \"fold\": {json.dumps(fold)}, "
                         "which is not an integer fold number")
    return fold


def load_datalist(
    json_list: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "training",
    fold: int | None = None,
    allow_absolute: bool = False,
    splits: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Read a Decathlon datalist and return entries with paths resolved inside ``data_dir``.

    ``split`` is ``"training"`` or ``"validation"``. With ``fold`` (BraTS), entries of the
    ``training`` list whose ``"fold"`` equals it form the validation split and the others the
    training split, as in the upstream BraTS folds file. An nnU-Net v2 dataset.json (no case
    lists) is read from its raw folder instead: ``fold`` of ``splits`` (``splits_final.json``),
    ``split="test"`` for ``imagesTs`` (:mod:`swinbob.data.nnunet_raw`).
    """
    path = find_datalist(json_list, data_dir)
    try:
        text = read_bounded_text(path, "datalist")
    except (OSError, ValueError) as exc:  # not a regular file, too large, not UTF-8
        raise ValueError(f"datalist {path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        content = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"datalist {path} is not valid JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise ValueError(f"datalist {path} must be a JSON object with 'training' (and 'validation') lists, "
                         f"got a JSON {type(content).__name__}")
    if is_raw_dataset(content):
        return raw_entries(path, content, split, fold, splits)
    for name in ("training", "validation", split):
        if not isinstance(content.get(name, []), list):
            raise ValueError(f"datalist {path}: '{name}' must be a list of entries, got {json.dumps(content[name])[:60]}")
    pooled = content.get("training", []) + content.get("validation", [])
    if fold is not None and any(isinstance(e, dict) and "fold" in e for e in pooled):
        # Fold files (BraTS): every entry carrying a "fold", from either list, joins the pool.
        entries = [e for e in pooled if isinstance(e, dict) and "fold" in e
                   and (_entry_fold(e, path) == fold) == (split == "validation")]
    else:
        entries = content.get(split, [])
    data_path = Path(data_dir)
    resolved = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"datalist {path}: entry {index} of '{split}' has no 'image'")
        try:
            resolved.append(_resolve_entry(entry, data_path, allow_absolute))
        except ValueError as exc:
            raise ValueError(f"datalist {path}: entry {index} of '{split}': {exc}") from exc
    return resolved


def case_name(entry: Mapping[str, Any]) -> str:
    """A readable case id from an entry: the first image file's name without NIfTI suffix."""
    image = entry["image"]
    first = Path(image[0] if isinstance(image, (list, tuple)) else image).name
    return nifti_stem(first) or first


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

def _file_paths(source: Any) -> list[str | os.PathLike]:
    """The paths in a transform input (one path or a list of them); none for in-memory data."""
    if isinstance(source, (str, os.PathLike)):
        return [source]
    if isinstance(source, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in source):
        return list(source)
    return []


class LoadCheckedImaged(T.LoadImaged):
    """``LoadImaged`` that validates each file's header first and refuses NaN or Inf voxels.

    Headers go through :func:`~swinbob.files.load_nifti_header` (zero spacing, singular affines,
    sizes the file cannot hold), which nibabel would otherwise repair or attempt silently. One NaN
    voxel makes a z-score normalised volume all NaN (its mean is NaN): training would go on with
    NaN losses and evaluation would score garbage, silently. SOLF refuses such scans too, so they
    never reach a cleaned datalist. Errors are :class:`~swinbob.files.NiftiError` naming the file.

    Trailing singleton dimensions beyond one channel axis are squeezed, as :func:`read_nifti`
    does, so that a label saved as X×Y×Z×1×1 loads as the datalist check saw it.

    With ``spacing`` (the chain's target, mm), a volume whose resampled size would exceed
    ``--max_voxels`` is refused from its header, before it is read or resampled.
    """

    def __init__(self, *args: Any, spacing: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        sources = {key: data[key] for key in self.key_iterator(dict(data))}
        for source in sources.values():
            for path in _file_paths(source):
                header = load_nifti_header(path)
                if self.spacing is not None:
                    check_resampled_size(path, header.shape, header.affine, self.spacing)
        d = super().__call__(data, reader)
        for key, source in sources.items():
            if d[key].ndim < 3:  # would fail deep in the network ("Inputs must have 5 dimensions")
                raise NiftiError(f"{', '.join(map(str, _file_paths(source)))}: a {d[key].ndim}D image (shape "
                                 f"{tuple(d[key].shape)}); Swin-BOB needs 3D volumes")
            while d[key].ndim > 4 and d[key].shape[-1] == 1:  # X×Y×Z×1×1 files, or a list of X×Y×Z×1
                d[key] = d[key].squeeze(-1)  # (read_nifti squeezes the same way)
            check_finite(np.asarray(d[key]), [str(s) for s in _file_paths(source)], str(key))
        return d


class RequireForegroundd(T.MapTransform):
    """Refuse an image without any voxel above 0 after intensity normalisation.

    ``CropForegroundd`` keeps the voxels above 0; without any it returns an empty volume that
    fails much later with an unrelated error (patch sampling, sliding window). A blank scan, or
    one whose intensities all fall outside the task's window, is named here instead.
    """

    def __init__(self, keys: KeysCollection, floor: float = 0.0) -> None:
        super().__init__(keys)
        self.floor = floor

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not bool((torch.as_tensor(image) > self.floor).any()):
                source = getattr(image, "meta", {}).get("filename_or_obj", "(in-memory image)")
                raise NiftiError(f"{source}: {key} has no voxel above {self.floor:g} after intensity normalisation (blank, or "
                                 "entirely outside the task's intensity window): nothing to crop to")
        return d


class LabelsToRegionsd(T.MapTransform):
    """Turn a raw label map (1, X, Y, Z) into one binary channel per region (TC/WT/ET for BraTS).

    Voxels with the ignore value stay ``IGNORE_LABEL`` in every region channel so that the loss
    can mask them.
    """

    def __init__(self, keys: KeysCollection, regions: Mapping[str, Sequence[int]]) -> None:
        super().__init__(keys)
        self.regions = {name: tuple(labels) for name, labels in regions.items()}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            raw = label[0]
            channels = [torch.isin(raw, torch.as_tensor(ids, device=raw.device)) for ids in self.regions.values()]
            regions = torch.stack(channels).to(torch.float32)
            regions[:, raw == IGNORE_LABEL] = IGNORE_LABEL
            d[key] = MetaTensor(regions, meta=label.meta) if isinstance(label, MetaTensor) else regions
        return d


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the histogram cut that maximises the between-class variance."""
    values = values.float().flatten()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts = torch.histc(values, bins=bins, min=low, max=high).double()
    centres = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    centres = (centres[:-1] + centres[1:]) / 2
    weight_low = torch.cumsum(counts, 0)
    weight_high = weight_low[-1] - weight_low
    mass_low = torch.cumsum(counts * centres, 0)
    mean_low = mass_low / weight_low.clamp(min=1)
    mean_high = (mass_low[-1] - mass_low) / weight_high.clamp(min=1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(torch.argmax(between[:-1]))])


class NormalizeForegroundd(T.MapTransform):
    """Per-channel z-score over an Otsu foreground mask, after clipping to the foreground's percentiles.

    Why not MONAI's ``NormalizeIntensityd(nonzero=True)``: with noise in the background every voxel
    is non-zero, so the "brain" statistics become those of the whole field of view and the tissue
    contrast that the network learnt moves (the failure seen on real MRI: grey matter predicted in
    the noisy background). Otsu's threshold separates the dark background from tissue whatever the
    gain, clipping to the foreground's ``low_pct``..``high_pct`` percentiles flattens background noise
    below the darkest tissue and bright outliers, and the mean and std come from the clipped
    foreground only. The background is kept (clipped), so the output is defined everywhere.
    """

    def __init__(self, keys: KeysCollection, low_pct: float = 0.5, high_pct: float = 99.5) -> None:
        super().__init__(keys)
        if not 0.0 <= low_pct < high_pct <= 100.0:
            raise ValueError(f"foreground percentiles must satisfy 0 <= low < high <= 100, got {low_pct}, {high_pct}")
        self.low_pct, self.high_pct = low_pct, high_pct

    def normalise(self, channel: torch.Tensor) -> torch.Tensor:
        values = channel.float()
        foreground = values[values > otsu_threshold(values)]
        if foreground.numel() < 2:
            return values - values.mean()
        sample = foreground if foreground.numel() <= 2**24 else foreground[:: foreground.numel() // 2**24 + 1]
        low, high = torch.quantile(sample, torch.tensor([self.low_pct / 100, self.high_pct / 100]))
        clipped = values.clamp(float(low), float(high))
        fg = foreground.clamp(float(low), float(high))
        return (clipped - fg.mean()) / fg.std().clamp(min=1e-8)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            out = torch.stack([self.normalise(torch.as_tensor(c)) for c in image])
            if isinstance(image, MetaTensor):  # keep the applied operations: predictions are inverted through them
                out = MetaTensor(out, meta=image.meta, applied_operations=image.applied_operations)
            d[key] = out
        return d


@dataclass(frozen=True)
class Above:
    """``x > level`` as a picklable function (foreground selection for MONAI's crops)."""

    level: float = 0.0

    def __call__(self, x: Any) -> Any:
        return x > self.level


def background_level(intensity: Intensity) -> float:
    """The normalised value of background (air, outside the window): the lower end of a CT
    window, 0 for z-scored MRI (whose zero voxels stay zero); foreground crops keep what lies above."""
    if intensity.kind == "zscore_foreground":  # the background is clipped, not zero: keep the whole volume
        return float("-inf")
    return float(intensity.b_min) if intensity.kind == "window" else 0.0


def intensity_transform(intensity: Intensity) -> T.MapTransform:
    """The intensity normalisation of a task as a dictionary transform on ``image``."""
    if intensity.kind == "window":
        return T.ScaleIntensityRanged(
            keys="image", a_min=intensity.a_min, a_max=intensity.a_max,
            b_min=intensity.b_min, b_max=intensity.b_max, clip=True,
        )
    if intensity.kind == "zscore_foreground":
        return NormalizeForegroundd(keys="image", low_pct=intensity.low_pct, high_pct=intensity.high_pct)
    return T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)


def preprocess_transforms(task: Task, config: DataConfig, with_label: bool = True) -> list[T.Transform]:
    """Deterministic chain from files to normalised RAS tensors at the task spacing (invertible)."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    chain: list[T.Transform] = [
        LoadCheckedImaged(keys=keys, image_only=True, spacing=config.spacing),
        T.EnsureChannelFirstd(keys=keys),
        T.Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys=keys, pixdim=config.spacing, mode=modes),
        intensity_transform(config.intensity),
    ]
    if with_label and task.ignore_value is not None and task.ignore_value != IGNORE_LABEL:
        chain.insert(1, T.MapLabelValued(keys="label", orig_labels=[task.ignore_value], target_labels=[IGNORE_LABEL]))
    if task.crop_foreground:
        floor = background_level(config.intensity)
        chain.append(RequireForegroundd(keys="image", floor=floor))
        chain.append(T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True, select_fn=Above(floor)))
    if with_label and task.mode == "regions":
        chain.append(LabelsToRegionsd(keys="label", regions=task.regions))
    return chain


class CropIndicesd(T.FgBgToIndicesd):
    """``FgBgToIndicesd`` that leaves ignore voxels out and stores the flat indices compactly.

    Foreground is a label above 0 other than :data:`~swinbob.labels.IGNORE_LABEL`, background a
    label of 0 where the image is above ``image_threshold`` (MONAI's rule, which counts the ignore
    value as foreground: positive crops would centre on voxels that teach nothing, e.g. on what
    SOLF rejected). Indices are numpy int32 (int64 only for labels of 2**31 voxels or more)
    instead of MONAI's int64 MetaTensors.

    Cached after the deterministic preprocessing, the indices spare ``RandCropByPosNegLabeld`` a scan
    of the whole label on every sample. They cost 4 bytes per voxel inside the body (foreground
    plus background above the image threshold), i.e. up to +50 % on the cache of a one-channel case
    (image and label float32: 8 bytes per voxel), +20 % for four channels.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        body = None
        if self.image_key:
            body = (plain_tensor(torch.as_tensor(d[self.image_key])) > self.converter.image_threshold).any(0)
        for key in self.key_iterator(d):
            label = plain_tensor(torch.as_tensor(d[key]))
            foreground = ((label > 0) & (label != IGNORE_LABEL)).any(0)
            background = (label == 0).all(0) if body is None else (label == 0).all(0) & body
            dtype = np.int32 if foreground.numel() < 2**31 else np.int64
            for name, mask in ((f"{key}{self.fg_postfix}", foreground), (f"{key}{self.bg_postfix}", background)):
                d[name] = np.flatnonzero(mask.cpu().numpy().ravel()).astype(dtype)
        return d


def permute_label_values(label: torch.Tensor, permutation: Sequence[int]) -> torch.Tensor:
    """A copy of ``label`` in which every value ``v`` below ``len(permutation)`` becomes
    ``permutation[v]``; other values (the ignore value) and a MetaTensor's metadata are kept."""
    out = label.clone()
    values = plain_tensor(out)  # a view: written in place
    ids = values.long()
    inside = (ids >= 0) & (ids < len(permutation))
    table = torch.as_tensor(permutation, device=values.device)
    values[inside] = table[ids[inside]].to(values.dtype)
    return out


class RandFlipPairsd(T.RandFlipd):
    """``RandFlipd`` that also swaps the label values of left/right pairs in ``label_key`` whenever it flips.

    A mirror image of a body, along any axis, is a body with left and right exchanged (its own left
    is ``S × A``, and a mirror reverses one of the three): without the swap a mirrored patch would
    teach that ``kidney_left`` may lie on the body's right, and two augmentations that give the same
    patch (mirrors along x and y, a 180° rotation in their plane) would give it opposite labels.
    ``permutation`` says what each label value becomes (:attr:`~swinbob.tasks.Task.mirror_channels`);
    None makes this exactly ``RandFlipd``. One random draw decides the flip and the swap, so the random stream is
    ``RandFlipd``'s; the inverse undoes both.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.1, spatial_axis: int | Sequence[int] | None = None,
                 permutation: Sequence[int] | None = None, label_key: str = "label",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, prob=prob, spatial_axis=spatial_axis, allow_missing_keys=allow_missing_keys)
        self.permutation = None if permutation is None else tuple(permutation)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        d = super().__call__(data, lazy)
        if self._do_transform:
            self._swap_pairs(d)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        flipped = self.permutation is not None and self.label_key in data and \
            bool(self.get_most_recent_transform(data[self.label_key])[TraceKeys.DO_TRANSFORM])
        d = super().inverse(data)
        if flipped:
            self._swap_pairs(d)
        return d

    def _swap_pairs(self, d: dict[Hashable, torch.Tensor]) -> None:
        if self.permutation is not None and self.label_key in d:
            d[self.label_key] = permute_label_values(d[self.label_key], self.permutation)


def augment_transforms(task: Task, config: DataConfig, cache_crop_indices: bool = True) -> list[T.Transform]:
    """Random patch sampling and augmentations of the reference recipes (training only).

    Each mirror swaps the label values of the task's left/right pairs (:class:`RandFlipPairsd`), so
    an even number of mirrors, like the 90° rotations, keeps every name.

    The padding to the ROI and, with ``cache_crop_indices``, the label's foreground/background
    indices (:class:`CropIndicesd`, for label-balanced crops) are deterministic, so cache datasets
    keep them: each sample then starts from its crop. Without ``cache_crop_indices`` (the loader
    benchmark's reference) ``RandCropByPosNegLabeld`` finds them itself on every sample, by MONAI's
    rule: the same crops for labels without ignore voxels.
    """
    keys = ["image", "label"]
    floor = background_level(config.intensity)
    sampling: list[T.Transform] = [T.SpatialPadd(keys=keys, spatial_size=config.roi)]
    if task.mode == "regions":
        sampling.append(T.RandSpatialCropd(keys=keys, roi_size=config.roi, random_size=False))
    else:
        indices: dict[str, str] = {}
        if cache_crop_indices:
            sampling.append(CropIndicesd(keys="label", image_key="image", image_threshold=floor))
            indices = {"fg_indices_key": "label_fg_indices", "bg_indices_key": "label_bg_indices"}
        sampling.append(T.RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=config.roi, pos=1, neg=1,
            num_samples=config.num_samples, image_key="image", image_threshold=floor, **indices,
        ))
    chain: list[T.Transform] = sampling + [
        *(RandFlipPairsd(keys=keys, prob=config.flip_prob, spatial_axis=axis, permutation=task.mirror_channels)
          for axis in range(3)),
    ]
    if config.roi[0] == config.roi[1]:  # rotating in the x-y plane needs a square patch to batch
        chain.append(T.RandRotate90d(keys=keys, prob=config.rotate90_prob, max_k=3))
    chain += [
        T.RandScaleIntensityd(keys="image", factors=0.1, prob=config.scale_intensity_prob),
        T.RandShiftIntensityd(keys="image", offsets=0.1, prob=config.shift_intensity_prob),
    ]
    return chain + (shift_augment_transforms() if config.shift_augment else [])


def shift_augment_transforms() -> list[T.Transform]:
    """Scanner-shift augmentation of the normalised patch (MONAI transforms, nnU-Net-like strengths).

    Applied after normalisation, as nnU-Net does, so that cache datasets keep the deterministic
    preprocessing: smooth bias field, gamma contrast, Gaussian noise over the whole patch
    (background included), Gaussian blur and a low-resolution simulation (down- and up-sampling).
    """
    return [
        T.RandBiasFieldd(keys="image", prob=0.3, coeff_range=(0.0, 0.3)),
        T.RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.6, 1.7)),
        T.RandGaussianNoised(keys="image", prob=0.3, std=0.15),
        T.RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), sigma_z=(0.5, 1.5)),
        T.RandSimulateLowResolutiond(keys="image", prob=0.2, zoom_range=(0.4, 1.0)),
    ]


def train_transforms(task: Task, config: DataConfig, cache_crop_indices: bool = True) -> T.Compose:
    """Preprocessing followed by augmentation; cache datasets cache up to the first random step
    (see :func:`augment_transforms` for ``cache_crop_indices``)."""
    return T.Compose(preprocess_transforms(task, config) + augment_transforms(task, config, cache_crop_indices))


def plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """MetaTensor -> Tensor: metadata tracking costs time in every op of a training step."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def eval_transforms(task: Task, config: DataConfig, with_label: bool = True) -> T.Compose:
    """Preprocessing only: whole volumes for validation and inference."""
    return T.Compose(preprocess_transforms(task, config, with_label=with_label))
