"""Validation during training: Dice per scored class over whole volumes, summed over all ranks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from swinbob.data.transforms import plain_tensor
from swinbob.runtime.distributed import all_reduce_sum
from swinbob.labels import IGNORE_LABEL
from swinbob.infer.metrics import dice_from_masks, dice_per_class
from swinbob.tasks import Task
from swinbob.infer.window import sliding_window_logits


def case_dice(logits: torch.Tensor, label: torch.Tensor, task: Task) -> torch.Tensor:
    """Dice per scored class (NaN where absent from both) of one case's logits (1, C, ...)."""
    if task.mode == "regions":
        target = label[0]
        return dice_from_masks(logits[0] > 0, target == 1, valid=target != IGNORE_LABEL)
    return dice_per_class(logits[0].argmax(0), label[0, 0].long(), task.scored_classes)


def validate(
    model: torch.nn.Module,
    loader: DataLoader | None,
    task: Task,
    roi: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.5,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean Dice per scored class over this rank's cases, summed over all ranks, plus ``mean``.

    Each class is averaged over the cases where it is present in prediction or ground truth
    (NaN Dice left out, as nnU-Net); ``mean`` averages the classes. Ranks hold disjoint shards
    of the validation list, so every case counts exactly once.
    """
    device = next(model.parameters()).device
    sums = torch.zeros(len(task.scored_classes), dtype=torch.float64, device=device)
    counts = torch.zeros_like(sums)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in loader or ():
            image = plain_tensor(batch["image"]).to(device, non_blocking=True)
            logits = sliding_window_logits(model, image, tuple(roi), sw_batch_size, overlap, amp_dtype)
            dice = case_dice(logits, plain_tensor(batch["label"]).to(logits.device), task).to(device)
            sums += torch.nan_to_num(dice.double(), nan=0.0)
            counts += ~torch.isnan(dice)
    model.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    per_class = (sums / counts).tolist()  # 0/0 = NaN: class never present in any case
    result = {task.class_names[c]: value for c, value in zip(task.scored_classes, per_class)}
    present = [v for v in per_class if not math.isnan(v)]
    result["mean"] = sum(present) / len(present) if present else float("nan")
    return result
