"""What a training checkpoint holds beyond the weights, and how a run starts from one: ``--resume``
(exactly, mid-epoch too, falling back to ``last.prev.pt`` when ``last.pt`` is unreadable),
``--checkpoint`` (upstream) or fine-tuning weights.

Everything is stored as plain types and tensors (format of DESIGN §4) so that checkpoints load
with ``torch.load(weights_only=True)``: numpy's RNG state, for instance, becomes a tensor and
numbers instead of a pickled ndarray.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swinbob.checkpoint import (
    CheckpointError, extract_state_dict, load_checkpoint, load_exactly, make_checkpoint, previous_checkpoint,
    transfer_weights,
)
from swinbob.data.transforms import DataConfig
from swinbob.runtime.distributed import DistContext
from swinbob.labels import TOTALVIBE_LABELS
from swinbob.model import ModelConfig
from swinbob.tasks import Task
from swinbob.train.plan import TrainPlan

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Counters that continue across a resume."""

    epoch: int = 0
    """Completed epochs."""
    global_step: int = 0
    """Optimizer steps taken (skipped non-finite steps excluded)."""
    best_metric: float | None = None
    """Best mean validation Dice so far (None before the first validation)."""
    skipped_steps: int = 0
    """Steps skipped because the loss was NaN/Inf."""
    epoch_step: int = 0
    """Steps already done in epoch ``epoch + 1`` (0 at an epoch boundary; >0 after a stop signal)."""


@dataclass
class ResumePoint:
    """What a resumed run needs beyond the counters of :class:`TrainState`."""

    step_rng: dict[str, Any] | None = None
    """This rank's RNG states when a stop signal interrupted an epoch, restored once the steps
    done before it have been skipped (None when resuming at an epoch boundary)."""
    rotate: bool = True
    """Whether the next save may keep the ``last.pt`` it replaces as ``last.prev.pt``. False
    after falling back to ``last.prev.pt`` because ``last.pt`` was unreadable: the broken file
    must not replace the good one."""


def run_config(task: Task, model: ModelConfig, data: DataConfig) -> dict[str, Any]:
    """The checkpoint's ``config``: rebuild the model (``ModelConfig.from_dict``) and preprocess.

    Model fields sit at the top level so that ``ModelConfig.from_dict(ckpt["config"])`` works.
    """
    return {
        **model.to_dict(),
        "task": task.name,
        "mode": task.mode,
        "channel_names": list(task.channel_names),
        "label_map": dict(task.label_map),
        "class_names": task.class_names,
        "regions": {name: list(ids) for name, ids in task.regions.items()},
        "spacing": [float(s) for s in data.spacing],
        "intensity": dataclasses.asdict(data.intensity),
        "task_spec": dataclasses.replace(task, spacing=tuple(data.spacing), intensity=data.intensity, roi=model.roi).to_dict(),
    }


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's Python, numpy, torch and CUDA generator states as checkpointable values."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def full_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    config: dict[str, Any],
    schedule: dict[str, Any],
    rng_states: list[dict[str, Any]],
    step_rng_states: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything needed to continue exactly; the RNG lists hold one entry per rank.

    ``rng_states`` are the states to restore before epoch ``state.epoch + 1`` starts. Mid-epoch
    (``state.epoch_step`` > 0) ``step_rng_states`` are those at the interruption, restored after
    a resume has replayed the epoch's data order up to that step.
    """
    extra = {"rng_step": step_rng_states} if state.epoch_step else {}
    return make_checkpoint(
        model, config,
        optimizer=optimizer.state_dict(), scheduler=schedule, scaler=scaler.state_dict(),
        epoch=state.epoch, global_step=state.global_step, best_metric=state.best_metric,
        skipped_steps=state.skipped_steps, epoch_step=state.epoch_step, rng=rng_states, **extra,
    )


def load_resume_checkpoint(path: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint to resume from and its file: ``path``, or ``last.prev.pt`` if ``path`` is unreadable.

    Atomic writes never leave a torn ``last.pt``; this covers damage after the write (a disk
    error, a truncating copy). The fallback is logged with both file names and the epoch it
    goes back to; with no usable previous checkpoint the error names both files.
    """
    try:
        return load_checkpoint(path), path
    except CheckpointError as exc:
        previous = previous_checkpoint(path)
        if not previous.is_file():
            raise CheckpointError(f"{exc}; there is no previous checkpoint {previous} to fall back to") from exc
        try:
            checkpoint = load_checkpoint(previous)
        except CheckpointError as previous_exc:
            raise CheckpointError(f"{exc}; the previous checkpoint is unusable too: {previous_exc}") from previous_exc
        log.warning("%s; resuming from the previous checkpoint %s instead (after epoch %s, step %s of the next)",
                    exc, previous, checkpoint.get("epoch"), checkpoint.get("epoch_step", 0))
        return checkpoint, previous


class ResumeMismatch(CheckpointError):
    """``--resume`` with settings the checkpoint cannot continue (another optimizer): exit status 2."""


OPTIMIZER_FLAGS = ("momentum", "dampening", "nesterov", "betas", "amsgrad", "decoupled_weight_decay")
"""Hyper-parameter keys whose presence or value tells SGD, Adam and AdamW apart."""


def check_same_optimizer(saved: Any, optimizer: torch.optim.Optimizer, source: str, name: str) -> None:
    """Refuse an optimizer state saved by another optimizer (an AdamW state under ``--optim_name sgd``
    would fail at the first step with ``KeyError: 'momentum'``, after loading everything else)."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not groups or not isinstance(groups[0], dict):
        raise CheckpointError(f"{source}: its optimizer state is not a torch optimizer state_dict")
    own = optimizer.param_groups[0]
    mine = {k: own[k] for k in OPTIMIZER_FLAGS if k in own}
    theirs = {k: groups[0][k] for k in OPTIMIZER_FLAGS if k in groups[0]}
    if mine.keys() != theirs.keys() or mine.get("decoupled_weight_decay") != theirs.get("decoupled_weight_decay"):
        raise ResumeMismatch(f"{source} was saved by another optimizer than --optim_name {name} (its settings: "
                             f"{sorted(theirs)}); resume with the --optim_name of that run, or start from its "
                             "weights with --checkpoint")


def restore_training(
    checkpoint: dict[str, Any],
    source: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: dict[str, Any],
) -> TrainState:
    """Load weights, optimizer and scaler of a full-state checkpoint and return its counters.

    RNG states are restored separately (:func:`restore_rng`), as late as possible: building
    data loaders reseeds torch's generator.
    """
    if "optimizer" not in checkpoint or "epoch" not in checkpoint:
        raise CheckpointError(f"{source} is not a full training state (no optimizer/epoch); use --checkpoint to start from its weights")
    check_same_optimizer(checkpoint["optimizer"], optimizer, source, type(optimizer).__name__.lower())
    load_exactly(model, checkpoint, source, "other task or flags?")
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    if checkpoint.get("scheduler") not in (None, schedule):
        log.warning("%s: learning-rate schedule changed from %s to %s", source, checkpoint["scheduler"], schedule)
    return TrainState(
        epoch=int(checkpoint["epoch"]), global_step=int(checkpoint.get("global_step", 0)),
        best_metric=checkpoint.get("best_metric"), skipped_steps=int(checkpoint.get("skipped_steps", 0)),
        epoch_step=int(checkpoint.get("epoch_step", 0)),
    )


def upstream_start(checkpoint: dict[str, Any]) -> TrainState:
    """Epoch and best metric of an upstream-style checkpoint (``--checkpoint``): weights only else."""
    best = checkpoint.get("best_metric", checkpoint.get("best_acc"))
    return TrainState(epoch=int(checkpoint.get("epoch", 0)), best_metric=None if best is None else float(best))


def initial_state(plan: TrainPlan, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, schedule: dict, ctx: DistContext) -> tuple[TrainState, ResumePoint]:
    """Counters and weights from ``--resume``, ``--checkpoint`` or fine-tuning weights, else fresh."""
    args = plan.options
    if plan.resume is not None:
        ckpt, source = load_resume_checkpoint(plan.resume)
        state = restore_training(ckpt, str(source), model, optimizer, scaler, schedule)
        rng, step_rng = ckpt.get("rng") or [], ckpt.get("rng_step") or []
        if rng:
            if len(rng) != ctx.world_size:
                log.warning("resuming %d rank(s) from a %d-rank run: each epoch keeps its cases and augmentations "
                            "(padding aside), split differently between ranks; dropout draws differ", ctx.world_size, len(rng))
            restore_rng(rng[ctx.rank % len(rng)], ctx.device)
        log.info("resumed from %s after epoch %d + %d step(s) (step %d, best Dice %s)",
                 source, state.epoch, state.epoch_step, state.global_step, state.best_metric)
        step = step_rng[ctx.rank % len(step_rng)] if step_rng and state.epoch_step else None
        return state, ResumePoint(step_rng=step, rotate=source == plan.resume)
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        report = transfer_weights(model, extract_state_dict(ckpt), source=args.checkpoint)
        log.info("%s: %s", args.checkpoint, report.summary())
        return upstream_start(ckpt), ResumePoint()
    if plan.pretrained is not None:
        ckpt = load_checkpoint(plan.pretrained)
        report = transfer_weights(model, extract_state_dict(ckpt), source=str(plan.pretrained))
        log.info("%s: %s", plan.pretrained, report.summary())
        rows = init_head_rows(model, extract_state_dict(ckpt), source_class_names(ckpt), plan.task.class_names)
        if rows:
            log.info("head rows initialised from %s for %d/%d classes: %s", plan.pretrained, len(rows),
                     plan.task.out_channels, ", ".join(f"{name} ({src} -> {dst})" for name, src, dst in rows))
    return TrainState(), ResumePoint()


HEAD_KEYS = ("out.conv.conv.weight", "out.conv.conv.bias")
"""MONAI Swin-UNETR's output head: one row per output channel."""


def source_class_names(checkpoint: dict[str, Any]) -> list[str] | None:
    """The output channel names of a checkpoint: stored in ours; TotalVibeSegmentator's for an
    upstream Swin-BOB checkpoint with 73 outputs; else None."""
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    if config.get("class_names"):
        return [str(n) for n in config["class_names"]]
    bias = extract_state_dict(checkpoint).get(HEAD_KEYS[1])
    if bias is not None and bias.shape[0] == len(TOTALVIBE_LABELS):
        return [TOTALVIBE_LABELS[i] for i in range(len(TOTALVIBE_LABELS))]
    return None


def _name_key(name: str) -> frozenset[str]:
    """Names match regardless of word order and case: BTCV's right_kidney is TotalVibe's kidney_right."""
    return frozenset(name.lower().replace("-", "_").split("_"))


def init_head_rows(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source_names: list[str] | None, target_names: list[str]
) -> list[tuple[str, int, int]]:
    """Start each output row of a new head from the source head's row of the same structure.

    Fine-tuning Swin-BOB into a new label set re-initialises the head (its shape differs); rows of
    classes Swin-BOB already segments (liver, spleen, ...) are copied instead, so that those
    classes start from what it learned. Returns ``(name, source row, target row)`` per copied row;
    nothing when the heads have the same shape (already loaded) or no name matches.
    """
    own = model.state_dict()
    if not source_names or any(k not in state or k not in own for k in HEAD_KEYS):
        return []
    weight, bias = state[HEAD_KEYS[0]], state[HEAD_KEYS[1]]
    if weight.shape == own[HEAD_KEYS[0]].shape or weight.shape[1:] != own[HEAD_KEYS[0]].shape[1:]:
        return []
    by_key = {_name_key(n): i for i, n in enumerate(source_names) if n != "unused" and i < weight.shape[0]}
    rows = [(name, by_key[_name_key(name)], row) for row, name in enumerate(target_names) if _name_key(name) in by_key]
    if rows:
        new_weight, new_bias = own[HEAD_KEYS[0]].clone(), own[HEAD_KEYS[1]].clone()
        for _, src, dst in rows:
            new_weight[dst], new_bias[dst] = weight[src], bias[src]
        model.load_state_dict({HEAD_KEYS[0]: new_weight, HEAD_KEYS[1]: new_bias}, strict=False)
    return rows
