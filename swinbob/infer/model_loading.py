"""Loading a trained network for inference: its stored config, task and preprocessing, every weight.

A checkpoint is untrusted data: a malformed stored config or task is a
:class:`~swinbob.checkpoint.CheckpointError`, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from swinbob.checkpoint import CheckpointError, load_checkpoint, load_exactly
from swinbob.model import ModelConfig, build_model
from swinbob.tasks import TASK_NAMES, Intensity, Task, get_task


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
    only: a zero-shot model from another task is fed the dataset's own preprocessing); stored
    settings are validated (:meth:`Task.check`): a :class:`CheckpointError` otherwise."""
    if not stored or stored.get("task") != task.name:
        return task
    changes: dict[str, Any] = {}
    try:
        if stored.get("spacing"):
            changes["spacing"] = tuple(float(s) for s in stored["spacing"])
        if isinstance(stored.get("intensity"), dict):
            changes["intensity"] = Intensity(**stored["intensity"])
        trained = dataclasses.replace(task, **changes)
        trained.check()
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"the checkpoint's stored preprocessing is invalid ({exc})") from exc
    return trained


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
        shown = str(exc) if type(exc) is ValueError else f"{type(exc).__name__}: {exc}"  # Task.check names the field
        raise CheckpointError(f"the checkpoint's stored task is invalid ({shown})") from exc


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
    load_exactly(model, checkpoint, str(path), "check --feature_size, --in_channels, --out_channels")
    return model, config, stored
