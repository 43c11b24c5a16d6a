"""Sliding-window prediction over whole volumes (shared by validation and test_etta.py)."""

from __future__ import annotations

import contextlib

import torch
from monai.inferers import sliding_window_inference


def sliding_window_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    roi: tuple[int, int, int],
    sw_batch_size: int = 4,
    overlap: float = 0.5,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits (B, C, X, Y, Z) in fp32 for ``image`` (B, C_in, X, Y, Z) with Gaussian blending."""
    autocast = torch.autocast(image.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with autocast:
        logits = sliding_window_inference(image, roi, sw_batch_size, model, overlap=overlap, mode="gaussian")
    return logits.float()
