"""Sliding-window prediction of whole volumes: windows, Gaussian blending, where logits are summed.

Shared by validation during training (:func:`sliding_window_logits`) and by ``test_etta.py`` /
``predict`` (:func:`predict_logits`). Logits are accumulated on the GPU when the whole volume fits
comfortably in free memory and on the CPU otherwise; a CUDA out-of-memory error during
accumulation is retried on the CPU, so a large volume costs time instead of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from swinbob.runtime.devices import autocast

log = logging.getLogger(__name__)

ACCUMULATE_CHOICES = ("auto", "device", "cpu")
GPU_MEMORY_FRACTION = 0.5
"""Accumulate on the GPU only if the estimated buffers take at most this share of free memory:
the rest is headroom for the network's activations on a batch of windows."""


@dataclass(frozen=True)
class WindowSettings:
    """How a whole volume is cut into windows and where the results are summed."""

    roi: tuple[int, int, int]
    sw_batch_size: int = 4
    overlap: float = 0.5
    amp_dtype: torch.dtype | None = None
    accumulate: str = "auto"
    """``auto`` (GPU when it fits, see :func:`accumulation_device`), ``device`` or ``cpu``."""

    def __post_init__(self) -> None:
        if self.accumulate not in ACCUMULATE_CHOICES:
            raise ValueError(f"accumulate must be one of {', '.join(ACCUMULATE_CHOICES)}, got {self.accumulate!r}")


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
    return int(getattr(head, "out_channels", 1))


def _sliding_window(model, image, settings: WindowSettings, compute: torch.device, accumulate: torch.device):
    with autocast(compute, settings.amp_dtype):
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
