"""Device, precision and seeding choices shared by training and inference."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def select_device(name: str | None = None, local_rank: int = 0) -> torch.device:
    """``name`` if given (``cpu``, ``cuda``, ``cuda:1``), else the local rank's GPU, else the CPU."""
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"error: --device {name} requested but no CUDA GPU is available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def autocast_dtype(device: torch.device, amp: str | None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (``bf16``, ``fp16``, ``none``/None) on ``device``.

    Mixed precision is a GPU feature here: on the CPU everything runs in fp32 so that results are
    exact and reproducible. ``bf16`` falls back to ``fp16`` on GPUs without bf16 support.
    """
    if amp in (None, "none", "fp32") or device.type != "cuda":
        return None
    if amp == "bf16":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        log.warning("bf16 is not supported on %s; using fp16 with a gradient scaler", torch.cuda.get_device_name(device))
        return torch.float16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"unknown --amp {amp!r}; choose bf16, fp16 or none")


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``amp_dtype`` on ``device``'s type, or no change for None (fp32)."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
