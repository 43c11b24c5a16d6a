"""What a training run is told to do: the resolved, checked settings the engine reads.

:mod:`swinbob.train.cli` builds a :class:`TrainPlan` from the command line; the engine, the state
and every spawned process read only this plan (picklable), never the argparse namespace.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swinbob.data.transforms import DataConfig
from swinbob.model import ModelConfig
from swinbob.tasks import Task


@dataclass(frozen=True)
class TrainOptions:
    """The run's settings besides task, model and data: checked plain values, read by the engine
    instead of the argparse namespace (which never leaves :mod:`swinbob.train.cli`)."""

    json_list: str
    workers: int
    data_check: str
    cache_dir: str | None
    use_normal_dataset: bool
    cache_rate: float
    batch_size: int
    seed: int
    max_steps_per_epoch: int | None
    deterministic: bool
    optim_name: str
    momentum: float
    squared_dice: bool
    smooth_nr: float
    smooth_dr: float
    bce_weight: float
    lrschedule: str
    compile: str
    compile_cache: str | None
    nan_patience: int
    log_every: int
    save_checkpoint: bool
    sw_batch_size: int
    checkpoint: str | None


@dataclass(frozen=True)
class TrainPlan:
    """Everything a training process needs, resolved and checked (picklable for spawning)."""

    task: Task
    model: ModelConfig
    data: DataConfig
    train_entries: list[dict[str, Any]]
    val_entries: list[dict[str, Any]]
    logdir: Path
    max_epochs: int
    val_every: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    overlap: float
    amp: str
    pretrained: Path | None
    resume: Path | None
    options: TrainOptions

    def to_dict(self) -> dict[str, Any]:
        """Plain-type view written to ``<logdir>/config.json`` (flags and resolved values)."""
        return {
            "task": self.task.name, "class_names": self.task.class_names, "task_spec": self.task.to_dict(),
            "model": self.model.to_dict(),
            "data": {**dataclasses.asdict(self.data), "intensity": dataclasses.asdict(self.data.intensity)},
            "num_train_cases": len(self.train_entries), "num_val_cases": len(self.val_entries),
            "logdir": str(self.logdir), "max_epochs": self.max_epochs, "val_every": self.val_every,
            "lr": self.lr, "weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
            "overlap": self.overlap, "amp": self.amp,
            "pretrained": str(self.pretrained) if self.pretrained else None,
            "resume": str(self.resume) if self.resume else None,
            "options": dataclasses.asdict(self.options),
        }


def logdir_path(logdir: str | None, task: Task) -> Path:
    """Upstream puts runs under ``./runs/<logdir>``; absolute paths are taken as given."""
    name = Path(logdir or task.name)
    return name if name.is_absolute() else Path("runs") / name
