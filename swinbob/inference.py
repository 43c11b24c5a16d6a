"""Model loading, input cases, sliding-window prediction, labels, and mapping back to each input's space.

Shared by validation during training (:func:`sliding_window_logits`) and by ``test_etta.py``.
Logits are accumulated on the GPU when the whole volume fits comfortably in free memory and on
the CPU otherwise; a CUDA out-of-memory error during accumulation is retried on the CPU, so a
large volume costs time instead of the run. Predictions are mapped back to the input grid with
MONAI's inverse of the preprocessing (orientation, resampling, foreground crop), which needs the
very :class:`~monai.transforms.Compose` instance that preprocessed the image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from swinbob.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, transfer_weights
from swinbob.data import case_name
from swinbob.files import load_nifti_header, write_nifti
from swinbob.model import ModelConfig, build_model
from swinbob.tasks import TASK_NAMES, Intensity, Task, get_task

log = logging.getLogger(__name__)

GPU_MEMORY_FRACTION = 0.5
"""Accumulate on the GPU only if the estimated buffers take at most this share of free memory:
the rest is headroom for the network's activations on a batch of windows."""


def stored_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The run config saved in one of our checkpoints (model fields at its top level or under
    ``model``), or None for upstream-format and bare checkpoints."""
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        return None
    fields = {**config, **config["model"]} if isinstance(config.get("model"), dict) else config
    return fields if {"in_channels", "out_channels", "feature_size"} <= set(fields) else None


def trained_preprocessing(task: Task, stored: dict[str, Any] | None) -> Task:
    """``task`` with the spacing and intensity settings its checkpoint was trained with (same task
    only: a zero-shot model from another task is fed the dataset's own preprocessing)."""
    if not stored or stored.get("task") != task.name:
        return task
    changes: dict[str, Any] = {}
    if stored.get("spacing"):
        changes["spacing"] = tuple(float(s) for s in stored["spacing"])
    if isinstance(stored.get("intensity"), dict):
        changes["intensity"] = Intensity(**stored["intensity"])
    return dataclasses.replace(task, **changes)


def stored_task(stored: dict[str, Any] | None) -> Task | None:
    """The task a checkpoint was trained for, with its preprocessing and input channels, or None.

    Checkpoints store the full task (``task_spec``); older ones only a preset's name, which is
    rebuilt from the preset plus the stored spacing, intensity and channel count. A checkpoint is
    untrusted data: any malformed field is a :class:`CheckpointError`, never a traceback.
    """
    if not stored:
        return None
    try:
        return _stored_task(stored)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"the checkpoint's stored task is unreadable ({type(exc).__name__}: {exc})") from exc


def _stored_task(stored: dict[str, Any]) -> Task | None:
    if isinstance(stored.get("task_spec"), dict):
        return Task.from_dict(stored["task_spec"])
    if stored.get("task") not in TASK_NAMES:
        return None
    label_map = {int(k) for k in (stored.get("label_map") or {})}
    task = trained_preprocessing(get_task(stored["task"], et_label=4 if 4 in label_map else 3), stored)
    try:
        return task.with_channels(int(stored["in_channels"]))
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's config does not fit task {task.name!r} ({exc})") from exc


def load_inference_model(
    path: str | os.PathLike, fallback: ModelConfig, use_checkpoint: bool = False, checkpoint: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, ModelConfig, dict[str, Any] | None]:
    """Rebuild the network stored in ``path`` (its own config, else ``fallback``) with every weight.

    ``checkpoint`` is the content of ``path`` when the caller has read it already. Returns the
    model, its config and the checkpoint's stored run config (None if it has none).
    Raises :class:`CheckpointError` when a tensor is missing or has another shape.
    """
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    stored = stored_config(checkpoint)
    config = fallback
    try:
        if stored is not None:
            config = dataclasses.replace(ModelConfig.from_dict(stored), use_checkpoint=use_checkpoint)
        model = build_model(config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    report = transfer_weights(model, extract_state_dict(checkpoint), source=str(path))
    if report.missing or report.shape_mismatch:
        examples = ", ".join((report.shape_mismatch + report.missing)[:3])
        raise CheckpointError(f"{path} does not fit the model: {len(report.shape_mismatch)} tensors differ in shape and "
                              f"{len(report.missing)} are missing (e.g. {examples}); check --feature_size, "
                              "--in_channels, --out_channels")
    return model, config, stored


@dataclass(frozen=True)
class WindowSettings:
    """How a whole volume is cut into windows and where the results are summed."""

    roi: tuple[int, int, int]
    sw_batch_size: int = 4
    overlap: float = 0.5
    amp_dtype: torch.dtype | None = None
    accumulate: str = "auto"
    """``auto`` (GPU when it fits, see :func:`accumulation_device`), ``device`` or ``cpu``."""


def accumulation_bytes(out_channels: int, spatial_shape: Sequence[int], roi: Sequence[int]) -> int:
    """Estimated bytes MONAI allocates to sum windows: fp32 output + count map, and the division copy."""
    padded = [max(int(s), int(r)) for s, r in zip(spatial_shape, roi)]
    return (2 * out_channels + 1) * int(np.prod(padded, dtype=np.int64)) * 4


def accumulation_device(
    compute_device: torch.device, out_channels: int, spatial_shape: Sequence[int], roi: Sequence[int]
) -> torch.device:
    """The compute device when the accumulation buffers fit in its free memory, else the CPU."""
    if compute_device.type != "cuda":
        return compute_device
    free, _total = torch.cuda.mem_get_info(compute_device)
    needed = accumulation_bytes(out_channels, spatial_shape, roi)
    if needed <= GPU_MEMORY_FRACTION * free:
        return compute_device
    log.info("accumulating %.1f GiB of logits on the CPU (GPU has %.1f GiB free)", needed / 2**30, free / 2**30)
    return torch.device("cpu")


def _model_device(model: torch.nn.Module, image: torch.Tensor) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else image.device


def _out_channels(model: torch.nn.Module) -> int:
    """Output channels of a Swin-UNETR (its ``out`` head); 1 for other modules (only sizes the estimate)."""
    head = getattr(getattr(model, "out", None), "conv", None)
    conv = getattr(head, "conv", head)
    return int(getattr(conv, "out_channels", 1))


def _sliding_window(model, image, settings: WindowSettings, compute: torch.device, accumulate: torch.device):
    autocast = torch.autocast(compute.type, dtype=settings.amp_dtype) if settings.amp_dtype else contextlib.nullcontext()
    with autocast:
        return sliding_window_inference(
            image, settings.roi, settings.sw_batch_size, model, overlap=settings.overlap,
            mode="gaussian", sw_device=compute, device=accumulate,
        )


def predict_logits(model: torch.nn.Module, image: torch.Tensor, settings: WindowSettings) -> torch.Tensor:
    """Logits (B, C, X, Y, Z) in fp32 for ``image`` (B, C_in, X, Y, Z), Gaussian-blended windows.

    The result lies on the accumulation device (the GPU or the CPU, see :class:`WindowSettings`).
    A CUDA out-of-memory error while accumulating on the GPU is logged and retried on the CPU.
    """
    compute = _model_device(model, image)
    if settings.accumulate == "cpu":
        accumulate = torch.device("cpu")
    elif settings.accumulate == "device":
        accumulate = compute
    else:
        accumulate = accumulation_device(compute, _out_channels(model), image.shape[2:], settings.roi)
    try:
        logits = _sliding_window(model, image, settings, compute, accumulate)
    except torch.OutOfMemoryError:
        if accumulate.type == "cpu":
            raise
        log.warning("CUDA out of memory while accumulating logits on %s; retrying with CPU accumulation", accumulate)
        if compute.type == "cuda":
            torch.cuda.empty_cache()
        logits = _sliding_window(model, image, settings, compute, torch.device("cpu"))
    return logits.float()


def sliding_window_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    roi: tuple[int, int, int],
    sw_batch_size: int = 4,
    overlap: float = 0.5,
    amp_dtype: torch.dtype | None = None,
    accumulate: str = "auto",
) -> torch.Tensor:
    """Logits (B, C, X, Y, Z) in fp32 for ``image`` (B, C_in, X, Y, Z); see :func:`predict_logits`."""
    settings = WindowSettings(tuple(roi), sw_batch_size, overlap, amp_dtype, accumulate)
    return predict_logits(model, image, settings)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One input: its image file(s) (one per channel, or one multi-channel file) and optional label."""

    name: str
    image: tuple[str, ...]
    label: str | None = None


def _case_id(path: str, channel_names: Sequence[str]) -> str:
    name = case_name({"image": path})
    if len(channel_names) > 1:
        name = re.sub(rf"[-_]({'|'.join(map(re.escape, channel_names))})$", "", name, flags=re.IGNORECASE)
    return name


def folder_cases(input_dir: str | Path, channel_names: Sequence[str]) -> list[Case]:
    """Unlabelled cases in ``input_dir``: every NIfTI file, or for multi-channel tasks the files
    ``<case>[-_]<channel>.nii[.gz]`` (anywhere below) grouped by folder and case, in the task's
    channel order.

    Channels are grouped within one folder only, so that two subjects sharing a case name in
    different folders are never mixed into one input (their clashing names are refused later);
    two files for one channel of one case raise ``ValueError``.
    """
    listed = sorted(p for p in Path(input_dir).rglob("*") if not p.name.startswith("._"))  # macOS metadata
    files = [p for p in listed if p.name.endswith((".nii", ".nii.gz"))]  # links and FIFOs too: their cases fail, named
    for path in listed:
        if path.name.endswith((".hdr", ".img", ".hdr.gz", ".img.gz")):
            log.warning("%s: not read (Analyze/NIfTI pairs are not predicted; convert the pair to .nii.gz)", path)
    if len(channel_names) == 1:
        return [Case(_case_id(str(p), channel_names), (str(p),)) for p in files if p.parent == Path(input_dir)]
    pattern = re.compile(rf"^(.+)[-_]({'|'.join(map(re.escape, channel_names))})\.nii(\.gz)?$", re.IGNORECASE)
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for path in files:
        match = pattern.match(path.name)
        if match:
            name, channel = match.group(1), match.group(2).lower()
            found = groups.setdefault((name, str(path.parent)), {})
            if channel in found:
                raise ValueError(f"two {channel} files for case {name!r}: {found[channel]} and {path}")
            found[channel] = str(path)
    return [Case(name, tuple(found.get(c.lower(), f"<missing {c} file for {name}>") for c in channel_names))
            for (name, _), found in sorted(groups.items())]


def datalist_cases(entries: Sequence[dict[str, Any]], channel_names: Sequence[str]) -> list[Case]:
    """Cases of datalist entries (``load_datalist``): image file(s), label, name from the first image."""
    cases = []
    for entry in entries:
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        cases.append(Case(_case_id(images[0], channel_names), tuple(images), entry.get("label")))
    return cases


def root_cause(exc: BaseException) -> str:
    """``Type: message`` of the error that matters, unwrapping MONAI's 'applying transform' wrappers."""
    while exc.__cause__ is not None and "applying transform" in str(exc):
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class CaseDataset(torch.utils.data.Dataset):
    """Preprocessed cases; a case that cannot be loaded yields its error instead of raising."""

    def __init__(self, cases: Sequence[Case], preprocess: Compose) -> None:
        self.cases, self.preprocess = list(cases), preprocess

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        try:
            for path in case.image:
                load_nifti_header(path)
            image = case.image[0] if len(case.image) == 1 else list(case.image)
            return {"case": case, "image": self.preprocess({"image": image})["image"]}
        except Exception as exc:  # noqa: BLE001 - any failure is reported per case
            reason = root_cause(exc)
            if not any(path in reason for path in case.image):
                reason += f" ({', '.join(case.image)})"
            return {"case": case, "error": reason}


def _identity(batch: Any) -> Any:
    return batch


def iterate_cases(cases: Sequence[Case], preprocess: Compose, workers: int) -> Iterator[dict[str, Any]]:
    """Preprocessed cases in order, loaded ahead by ``workers`` processes (0: in this process)."""
    loader = torch.utils.data.DataLoader(
        CaseDataset(cases, preprocess), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity
    )
    yield from loader


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------

def probabilities(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Softmax over channels (``softmax`` tasks) or per-channel sigmoid (``regions`` tasks)."""
    return torch.softmax(logits, dim=1) if mode == "softmax" else torch.sigmoid(logits)


def regions_to_labels(regions: torch.Tensor, et_label: int = 3) -> torch.Tensor:
    """BraTS TC/WT/ET masks (3, ...) → labels: ET → ``et_label``, TC−ET → 1 (NCR), WT−TC → 2 (SNFH)."""
    tc, wt, et = regions.bool()
    labels = torch.zeros(tc.shape, dtype=torch.uint8, device=regions.device)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = et_label
    return labels


def ordered_regions_to_labels(regions: torch.Tensor, region_labels: Sequence[int]) -> torch.Tensor:
    """nnU-Net's rule for region tasks: region i writes ``region_labels[i]``, later regions over earlier ones."""
    labels = torch.zeros(regions.shape[1:], dtype=torch.int16, device=regions.device)
    for mask, value in zip(regions.bool(), region_labels):
        labels[mask] = int(value)
    return labels


def to_labels(scores: torch.Tensor, mode: str, et_label: int = 3, are_logits: bool = True,
              region_labels: Sequence[int] = ()) -> torch.Tensor:
    """Integer labels (X, Y, Z) from logits or probabilities (C, X, Y, Z) of one case.

    Region tasks with ``region_labels`` (from a dataset.json) follow :func:`ordered_regions_to_labels`;
    without them the BraTS TC/WT/ET rule applies.
    """
    if mode == "softmax":
        return scores.argmax(dim=0).to(torch.int16)
    threshold = 0.0 if are_logits else 0.5
    if region_labels:
        return ordered_regions_to_labels(scores > threshold, region_labels)
    return regions_to_labels(scores > threshold, et_label)


def foreground(scores: torch.Tensor, mode: str, are_logits: bool = True) -> torch.Tensor:
    """Voxels (X, Y, Z) predicted as anything but background."""
    if mode == "softmax":
        return scores.argmax(dim=0) != 0
    return (scores > (0.0 if are_logits else 0.5)).any(dim=0)


def map_labels(labels: torch.Tensor, label_map: dict[int, int]) -> torch.Tensor:
    """Model label IDs → dataset IDs through ``label_map``; unmapped IDs become background (0)."""
    size = max(int(labels.max()) if labels.numel() else 0, max(label_map, default=0)) + 1
    lut = torch.zeros(size, dtype=torch.int16)
    for source, target in label_map.items():
        lut[source] = target
    return lut.to(labels.device)[labels.long()]


# ----------------------------------------------------------------------------------------------
# Back to the input space
# ----------------------------------------------------------------------------------------------

def invert_labels(labels: torch.Tensor, preprocessed_image: torch.Tensor, preprocess: Compose) -> np.ndarray:
    """Labels on the preprocessed grid (X, Y, Z) → the input image's grid, nearest neighbour.

    ``preprocessed_image`` is the MetaTensor that ``preprocess`` produced (it carries the stack of
    applied operations), and ``preprocess`` must be that same Compose instance.
    """
    inverter = Invertd(keys="pred", transform=preprocess, orig_keys="image", nearest_interp=True)
    pred = MetaTensor(labels.detach().cpu()[None].float())
    inverted = inverter({"pred": pred, "image": preprocessed_image})["pred"]
    array = inverted.as_tensor() if hasattr(inverted, "as_tensor") else inverted
    return np.rint(array[0].numpy()).astype(np.int16)


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint8 when every label fits (all benchmarks), else int16."""
    return np.dtype(np.uint8) if labels.size == 0 or (labels.min() >= 0 and labels.max() < 256) else np.dtype(np.int16)


def write_prediction(path: str | os.PathLike, labels: np.ndarray, reference_image: str | os.PathLike) -> Path:
    """Write ``labels`` atomically with the reference image's affine and header (shape must match)."""
    reference = load_nifti_header(reference_image)
    spatial = tuple(int(s) for s in reference.shape[:3])
    if tuple(labels.shape) != spatial:
        raise ValueError(f"prediction shape {labels.shape} differs from the input image's {spatial} ({reference_image})")
    header = reference.header.copy()
    header.set_data_shape(spatial)
    header.set_slope_inter(1.0, 0.0)
    return write_nifti(path, labels.astype(label_dtype(labels)), reference.affine, header=header)
