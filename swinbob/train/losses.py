"""Segmentation losses that ignore voxels labelled :data:`~swinbob.labels.IGNORE_LABEL`.

SOLF writes 255 where it rejected an organ: those voxels carry no supervision, so they must add
nothing to the loss and receive no gradient. MONAI's ``DiceCELoss`` cannot ignore voxels, hence
this small module: a masked soft Dice (``squared_pred``, ``smooth_nr``, ``smooth_dr`` as in
MONAI's ``DiceLoss``) plus cross-entropy with ``ignore_index`` for the softmax tasks (UKBOB,
BTCV), and a masked sigmoid Dice (optionally + BCE) over region channels for BraTS.

Without ignored voxels and with every class present in each patch, :class:`MaskedDiceCELoss` equals
MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` of the upstream recipes (a test checks this);
classes absent from a patch are left out of the Dice mean (see :func:`masked_soft_dice_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from swinbob.labels import IGNORE_LABEL
from swinbob.tasks import Task


def masked_soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    squared_pred: bool = False,
    smooth_nr: float = 0.0,
    smooth_dr: float = 1e-6,
) -> torch.Tensor:
    """Mean of ``1 - (2|P∩G| + nr) / (|P| + |G| + dr)`` over (sample, channel) pairs, on valid voxels.

    ``probs`` and ``target`` are (B, C, ...) with values in [0, 1]; ``valid`` (broadcastable to them)
    is applied to both so that ignored voxels enter neither the overlap nor the volumes.

    With ``smooth_nr == 0`` (the upstream recipes), a pair whose target is empty scores exactly 1
    whatever the prediction, with zero gradient: it only adds a constant (a 73-class patch holding
    3 classes floors near 0.96) and dilutes the mean. Such pairs are left out, as MONAI's
    ``DiceMetric(ignore_empty=True)`` leaves out empty ground truth; the loss then reads as
    1 - Dice of the classes present (0 when none is), and false positives of absent classes are
    the cross-entropy's job. With ``smooth_nr > 0`` an empty target gives a real false-positive
    penalty (MONAI's ``DiceLoss`` semantics) and every pair is kept. Where every class is present
    the value equals MONAI's ``DiceLoss``.
    """
    valid = valid.to(probs.dtype)
    probs = probs * valid
    target = target.to(probs.dtype) * valid
    dims = tuple(range(2, probs.ndim))
    intersection = (probs * target).sum(dims)
    if squared_pred:
        volumes = probs.square().sum(dims) + target.square().sum(dims)
    else:
        volumes = probs.sum(dims) + target.sum(dims)
    loss = 1.0 - (2.0 * intersection + smooth_nr) / (volumes + smooth_dr)
    if smooth_nr > 0:
        return loss.mean()
    present = target.sum(dims) > 0
    return (loss * present).sum() / present.sum().clamp_min(1)


class MaskedDiceCELoss(nn.Module):
    """Softmax Dice + cross-entropy over label IDs; voxels equal to ``ignore_index`` are left out.

    ``forward(logits (B, C, ...), labels (B, 1, ...))`` with integer-valued labels (any dtype).
    """

    def __init__(
        self,
        squared_pred: bool = False,
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-6,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        ignore_index: int = IGNORE_LABEL,
    ) -> None:
        super().__init__()
        self.squared_pred, self.smooth_nr, self.smooth_dr = squared_pred, smooth_nr, smooth_dr
        self.lambda_dice, self.lambda_ce, self.ignore_index = lambda_dice, lambda_ce, ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        if labels.ndim == logits.ndim:
            labels = labels[:, 0]
        valid = labels != self.ignore_index
        # Ignored voxels become class 0 for the one-hot only; the mask removes them again.
        onehot = F.one_hot(torch.where(valid, labels, 0), logits.shape[1]).movedim(-1, 1)
        dice = masked_soft_dice_loss(
            torch.softmax(logits, dim=1), onehot, valid.unsqueeze(1),
            self.squared_pred, self.smooth_nr, self.smooth_dr,
        )
        # Sum / count instead of reduction="mean": an all-ignored patch gives 0, not NaN (0/0).
        ce_sum = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")
        ce = ce_sum / valid.sum().clamp_min(1)
        return self.lambda_dice * dice + self.lambda_ce * ce


class MaskedRegionLoss(nn.Module):
    """Sigmoid Dice (+ ``bce_weight`` × BCE) over region channels such as BraTS TC/WT/ET.

    ``targets`` (B, R, ...) hold 0/1 per region and ``ignore_index`` where supervision is absent
    (as written by :class:`~swinbob.data.transforms.LabelsToRegionsd`).
    """

    def __init__(
        self,
        squared_pred: bool = False,
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-6,
        bce_weight: float = 0.0,
        ignore_index: int = IGNORE_LABEL,
    ) -> None:
        super().__init__()
        self.squared_pred, self.smooth_nr, self.smooth_dr = squared_pred, smooth_nr, smooth_dr
        self.bce_weight, self.ignore_index = bce_weight, ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != self.ignore_index
        target = torch.where(valid, targets, 0).to(logits.dtype)
        # Dice's mask is per voxel and channel here (regions are ignored together, but need not be).
        loss = masked_soft_dice_loss(torch.sigmoid(logits), target, valid, self.squared_pred, self.smooth_nr, self.smooth_dr)
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid.to(logits.dtype), reduction="sum")
            loss = loss + self.bce_weight * bce / valid.sum().clamp_min(1)
        return loss


def build_loss(
    task: Task,
    squared_dice: bool = False,
    smooth_nr: float = 0.0,
    smooth_dr: float = 1e-6,
    bce_weight: float = 0.0,
) -> nn.Module:
    """The task's training loss: Dice+CE for softmax tasks, region Dice (+BCE) for region tasks."""
    if task.mode == "regions":
        return MaskedRegionLoss(squared_dice, smooth_nr, smooth_dr, bce_weight)
    if bce_weight:
        raise ValueError(f"--bce_weight applies to region tasks (BraTS), not to {task.name!r}")
    return MaskedDiceCELoss(squared_dice, smooth_nr, smooth_dr)
