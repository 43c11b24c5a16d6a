"""Flip test-time augmentation (nnU-Net's mirroring): average the predictions of mirrored inputs.

Every subset of the mirrored spatial axes is predicted (2³ = 8 sliding windows for all three axes),
each output is flipped back, and the probabilities are averaged. An image mirrored along an odd
number of axes shows a body with its left and right exchanged, so the channels of each left/right
label pair of such an output are swapped back before averaging (``mirror_channels``), as training
swaps the labels of mirrored patches. The result is returned as logits again (log-probabilities for
softmax tasks, log-odds for region tasks) so that everything that takes the plain sliding window's
logits (labels, foreground, ETTA's source prediction and its entropy) takes it unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from swinbob.infer.window import WindowSettings, predict_logits

TTA_CHOICES = ("none", "flip")
EPS = 1e-6


def flip_subsets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first): the mirror images that are predicted."""
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def unmirror(logits: torch.Tensor, subset: Sequence[int], mirror_channels: Sequence[int] | None) -> torch.Tensor:
    """The logits (B, C, X, Y, Z) predicted on an image mirrored along the spatial axes ``subset``,
    mapped back to the unmirrored image: flipped back, and with the channels of left/right pairs
    swapped (``mirror_channels``: each channel's mirror channel) when ``subset`` holds an odd number
    of axes (an even number of mirrors is a rotation, which keeps every side's name)."""
    dims = [a + 2 for a in subset]
    logits = logits.flip(dims) if dims else logits
    if mirror_channels is None or len(subset) % 2 == 0:
        return logits
    if len(mirror_channels) != logits.shape[1]:
        raise ValueError(f"{len(mirror_channels)} mirror channels for a model with {logits.shape[1]} outputs")
    return logits[:, list(mirror_channels)]


def flip_tta_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    window: WindowSettings,
    mode: str,
    axes: Sequence[int] = (0, 1, 2),
    plain: torch.Tensor | None = None,
    mirror_channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits (B, C, X, Y, Z) of the mean probability over all mirror images of ``image`` (B, C_in, X, Y, Z).

    ``axes`` are spatial axes (0 = X). ``plain``: the unflipped image's logits if the caller already
    has them (one sliding window fewer). ``mirror_channels``: each output channel's counterpart in a
    mirror image (:attr:`~swinbob.tasks.Task.mirror_channels`), None when no channel has a
    side. The model must be in eval mode; no gradients are kept.
    """
    total = None
    subsets = flip_subsets(axes)
    with torch.no_grad():
        for subset in subsets:
            dims = [a + 2 for a in subset]
            if not dims and plain is not None:
                logits = plain
            else:
                logits = predict_logits(model, image.flip(dims) if dims else image, window)
            logits = unmirror(logits, subset, mirror_channels)
            probs = torch.softmax(logits, dim=1) if mode == "softmax" else torch.sigmoid(logits)
            total = probs.clone() if total is None else total.add_(probs)
    mean = total.div_(len(subsets)).clamp_(EPS, 1.0 - EPS)  # type: ignore[union-attr]
    return mean.log_() if mode == "softmax" else torch.logit(mean)
