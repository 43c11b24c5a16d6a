"""Self-training test-time adaptation (``--tta_adapt selftrain``), per case and episodic.

Entropy minimisation on one scan has no target other than the model's own confidence, so it
sharpens whatever the source model already says (right or wrong). Self-training gives the
adaptation a target: the source prediction itself, as a teacher, only where it is confident.
For one test volume:

1. the *teacher* is the source prediction the caller made (with ``--tta flip`` the flip ensemble,
   whose mean over mirror images is better calibrated than one pass); its argmax is the pseudo-label
   and only voxels whose teacher probability is at least ``confidence`` are kept (uncertainty mask,
   as in multi-view co-training, MuViT 2025);
2. only the normalisation layers' affine parameters are tuned (as ETTA does) for a few Adam steps on
   ROI-sized windows centred on the teacher's foreground, each window intensity-augmented (random
   gamma, contrast, offset and noise, as DG-TTA 2023 trains consistency under augmentation): the loss
   is the cross-entropy to the masked pseudo-labels, so the student must reproduce the teacher's
   confident voxels on perturbed versions of this very scan; the uncertain voxels follow from the
   re-calibrated features;
3. the adapted model predicts the teacher's foreground box (grown by a margin, as in ETTA) with the
   caller's predictor (flip TTA included), and the adapted probabilities are mixed with the teacher's
   (``mix``: the adapted share);
4. the teacher stands when the adapted prediction collapses (foreground shrinks by more than
   ``collapse``) or disagrees wildly (labels change on more than ``max_change`` of the foreground).

Memory is one batch of ``windows`` windows with gradients, never a whole-volume sliding window;
afterwards the model is exactly the loaded one (parameters, flags, grads, mode). Deterministic for
a seed: window centres and augmentations come from generators seeded with ``seed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from swinbob.infer.etta import (
    EttaOutcome, adaptation_box, affine_instance_norms, crop_windows, episode, foreground_fraction,
    norm_parameters, sample_window_starts,
)
from swinbob.infer.outputs import foreground, probabilities
from swinbob.infer.window import WindowSettings, predict_logits
from swinbob.runtime.devices import autocast

ADAPT_CHOICES = ("entropy", "selftrain")
"""``--tta_adapt``: ``entropy`` is the paper's ETTA (:mod:`swinbob.infer.etta`), ``selftrain`` this module."""


@dataclass(frozen=True)
class SelfTrainConfig:
    """Self-training settings. A case costs, over the source prediction: ``steps`` forward-backward
    passes on ``windows`` windows and one adapted prediction of the foreground box (with flip TTA,
    as many passes as the source made). The defaults are the best setting measured on the real-MRI
    shift benchmark's tuning shifts (benchmarks/RESULTS.md), where no setting beat flip TTA alone."""

    steps: int = 2
    lr: float = 1e-2
    windows: int = 1
    seed: int = 0
    confidence: float = 0.9
    """Teacher probability a voxel's pseudo-label needs to enter the loss (max softmax probability;
    per region, p or 1 - p)."""
    augment: float = 1.0
    """Strength of the intensity augmentation of each window (0: none; 1: gamma e^±0.3, contrast
    e^±0.2, offset ±0.2 and noise up to 0.1, in normalised intensity units)."""
    mix: float = 1.0
    """Share of the adapted probabilities in the final ones (the teacher's is 1 - mix)."""
    max_change: float = 0.3
    """Fall back to the teacher when the adapted labels differ from it on more than this share of
    the voxels that either calls foreground."""
    collapse: float = 0.5
    """Fall back to the teacher when the foreground shrinks by more than this fraction."""
    decoder_norms: bool = False
    """Also adapt the decoder's non-affine instance norms (a scale and shift added for the episode)."""
    overlap: float = 0.5
    """Sliding-window overlap of the adapted prediction over the box."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.windows < 1:
            raise ValueError(f"self-training needs at least one step and one window (steps={self.steps}, windows={self.windows})")
        if not self.lr > 0:
            raise ValueError(f"self-training learning rate must be positive, got {self.lr}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"self-training confidence must be in [0.5, 1), got {self.confidence}")
        if self.augment < 0:
            raise ValueError(f"self-training augment must be >= 0, got {self.augment}")
        if not 0.0 < self.mix <= 1.0:
            raise ValueError(f"self-training mix must be in (0, 1], got {self.mix}")
        if not 0.0 < self.max_change <= 1.0 or not 0.0 < self.collapse <= 1.0:
            raise ValueError(f"self-training max_change and collapse must be in (0, 1], got {self.max_change}, {self.collapse}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"self-training window overlap must be in [0, 1), got {self.overlap}")


def pseudo_labels(teacher_logits: torch.Tensor, mode: str, confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and their mask from the teacher's logits (B, C, ...).

    softmax: argmax (B, ...) int64 and ``max p >= confidence`` (B, ...); regions: ``p > 0.5`` per
    channel (B, C, ...) float and ``max(p, 1 - p) >= confidence`` per channel.
    """
    probs = probabilities(teacher_logits.float(), mode)
    if mode == "softmax":
        top, labels = probs.max(dim=1)
        return labels, top >= confidence
    return (probs > 0.5).float(), torch.maximum(probs, 1.0 - probs) >= confidence


def masked_pseudo_label_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean cross-entropy (binary per region) of ``logits`` to ``labels`` over the ``mask`` voxels (0 if none)."""
    logits = logits.float()
    if mode == "softmax":
        per_voxel = F.cross_entropy(logits, labels, reduction="none")
    else:
        per_voxel = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    weight = mask.float()
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1.0)


def augment_windows(windows: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Each window (N, C, ...) with a random gamma (on its min-max range), contrast, offset and
    Gaussian noise of the given ``strength``; parameters and noise come from ``generator`` (CPU)."""
    if strength == 0:
        return windows
    out = []
    for window in windows:
        u = torch.rand(5, generator=generator).tolist()
        gamma = math.exp((2 * u[0] - 1) * 0.3 * strength)
        scale = math.exp((2 * u[1] - 1) * 0.2 * strength)
        offset = (2 * u[2] - 1) * 0.2 * strength
        sigma = u[3] * 0.1 * strength
        low = window.amin(dim=tuple(range(1, window.ndim)), keepdim=True)
        high = window.amax(dim=tuple(range(1, window.ndim)), keepdim=True)
        span = (high - low).clamp_min(1e-6)
        x = ((window - low) / span).clamp(0.0, 1.0).pow(gamma) * span + low
        noise = torch.randn(window.shape, generator=generator).to(window.device, window.dtype)
        out.append(x * scale + offset + sigma * noise)
    return torch.stack(out)


def self_train(
    model: nn.Module,
    image: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    fg: torch.Tensor,
    params: Sequence[nn.Parameter],
    mode: str,
    config: SelfTrainConfig,
    window: WindowSettings,
) -> list[dict[str, object]]:
    """Tune ``params`` in place (call inside :func:`~swinbob.infer.etta.episode`) on masked
    pseudo-labels; ``labels``/``mask`` as :func:`pseudo_labels` gives them for the whole volume."""
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scaler = torch.amp.GradScaler(image.device.type, enabled=window.amp_dtype == torch.float16)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    fg_coords = torch.nonzero(fg)
    label_volume = (labels[:, None] if mode == "softmax" else labels).float()
    mask_volume = (mask[:, None] if mode == "softmax" else mask).float()
    history = []
    for _ in range(config.steps):
        starts = sample_window_starts(fg_coords, fg.shape, window.roi, config.windows, rng)
        x = augment_windows(crop_windows(image, starts, window.roi), config.augment, generator)
        target = crop_windows(label_volume, starts, window.roi)
        weight = crop_windows(mask_volume, starts, window.roi)
        if mode == "softmax":
            target, weight = target[:, 0].long(), weight[:, 0]
        with torch.enable_grad(), autocast(image.device, window.amp_dtype):
            loss = masked_pseudo_label_loss(model(x), target, weight, mode)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        history.append({"starts": starts, "loss": float(loss.detach()), "masked": float(weight.mean())})
    return history


def decisions(probs: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-voxel decisions of probabilities (C, ...): the class (softmax) or each region's p > 0.5."""
    return probs.argmax(dim=0, keepdim=True) if mode == "softmax" else probs > 0.5


def changed_share(teacher: torch.Tensor, adapted: torch.Tensor, mode: str) -> float:
    """Share of the voxels that either prediction (C, ...) calls foreground whose decision differs."""
    union = foreground(teacher, mode, are_logits=False) | foreground(adapted, mode, are_logits=False)
    differs = (decisions(teacher, mode) != decisions(adapted, mode)).any(dim=0)
    return int(torch.count_nonzero(differs & union)) / max(int(torch.count_nonzero(union)), 1)


def selftrain_predict(
    model: nn.Module,
    image: torch.Tensor,
    source_logits: torch.Tensor,
    mode: str,
    config: SelfTrainConfig,
    window: WindowSettings,
    predict: Callable[[nn.Module, torch.Tensor, WindowSettings], torch.Tensor] | None = None,
) -> EttaOutcome:
    """Self-train on one case; ``image`` (1, C, X, Y, Z) on the model's device, ``source_logits``
    (1, K, X, Y, Z) the teacher. ``predict`` makes the adapted prediction of the box (default the
    plain sliding window; flip TTA to match a flip teacher).

    Returns the mixed probabilities (K, *box), or a fallback reason (no foreground, no confident
    voxels, no normalisation parameters, collapse, too many changed labels): then the caller keeps
    the teacher.
    """
    fg = foreground(source_logits[0], mode)
    if not bool(fg.any()):
        return EttaOutcome(fallback="no foreground in the source prediction")
    labels, mask = pseudo_labels(source_logits, mode, config.confidence)
    if not bool(mask.any()):
        return EttaOutcome(fallback=f"no voxel with teacher probability >= {config.confidence:g}")
    box = adaptation_box(fg, window.roi)
    decoder = affine_instance_norms(model) if config.decoder_norms else contextlib.nullcontext([])
    with decoder:
        params = [p for _, p in norm_parameters(model)]
        if not params:
            return EttaOutcome(fallback="model has no affine normalisation parameters")
        device = image.device
        with episode(model, params):
            history = self_train(model, image, labels.to(device), mask.to(device), fg.to(device),
                                 params, mode, config, window)
            with torch.no_grad():
                box_window = dataclasses.replace(window, overlap=config.overlap)
                adapted_logits = (predict or predict_logits)(model, image[(slice(None), slice(None), *box)], box_window)[0]
    teacher = probabilities(source_logits[(0, slice(None), *box)].float()[None], mode)[0]
    adapted = probabilities(adapted_logits.to(teacher.device).float()[None], mode)[0]
    fg_source = foreground_fraction(fg[box])
    fg_adapted = foreground_fraction(foreground(adapted, mode, are_logits=False))
    change = changed_share(teacher, adapted, mode)
    info: dict[str, object] = {
        "losses": [step["loss"] for step in history], "masked_share": float(mask.float().mean()),
        "foreground_source": fg_source, "foreground_adapted": fg_adapted, "changed": change,
        "box": [[s.start, s.stop] for s in box],
    }
    reason = None
    if fg_adapted < (1.0 - config.collapse) * fg_source:
        reason = f"foreground collapsed ({fg_source:.4f} -> {fg_adapted:.4f})"
    elif change > config.max_change:
        reason = f"adapted labels changed on {change:.1%} of the foreground (> {config.max_change:g})"
    if reason:
        info["fallback"] = reason
        return EttaOutcome(box=box, fallback=reason, info=info)
    info["weight_adapted"] = config.mix
    mixed = adapted.mul_(config.mix).add_(teacher, alpha=1.0 - config.mix)
    return EttaOutcome(box=box, probs=mixed, info=info)
