"""Build the Swin-BOB network: MONAI's Swin-UNETR configured from a task and a few flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import SwinUNETR

from swinbob.limits import limit
from swinbob.tasks import Task

ROI_MULTIPLE = 32
"""Swin-UNETR halves the resolution five times (patch embedding + four merges)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in every checkpoint as plain types."""

    in_channels: int
    out_channels: int
    feature_size: int = 48
    roi: tuple[int, int, int] = (96, 96, 96)
    dropout_path_rate: float = 0.0
    use_checkpoint: bool = False
    use_v2: bool = False
    spatial_dims: int = 3
    norm_name: str = "instance"

    @classmethod
    def from_task(cls, task: Task, **overrides: object) -> ModelConfig:
        """The task's channels and ROI, with any field overridden by keyword."""
        fields = {"in_channels": task.in_channels, "out_channels": task.out_channels, "roi": tuple(task.roi)}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        fields["roi"] = tuple(int(r) for r in fields["roi"])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return {**asdict(self), "roi": list(self.roi)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """The config stored in a checkpoint, checked field by field before anything is built:
        a stranger's checkpoint may declare any size or type (raises ``ValueError``)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("in_channels", "out_channels", "feature_size", "spatial_dims"):
            if name in known and (isinstance(known[name], bool) or not isinstance(known[name], int)):
                raise ValueError(f"stored model config: {name} must be an integer, got {known[name]!r}")
        for name in ("use_checkpoint", "use_v2"):
            if name in known and not isinstance(known[name], bool):
                raise ValueError(f"stored model config: {name} must be true or false, got {known[name]!r}")
        if "norm_name" in known and not isinstance(known["norm_name"], str):
            raise ValueError(f"stored model config: norm_name must be a text, got {known['norm_name']!r}")
        if "dropout_path_rate" in known and (isinstance(known["dropout_path_rate"], bool)
                                            or not isinstance(known["dropout_path_rate"], (int, float))):
            raise ValueError(f"stored model config: dropout_path_rate must be a number, got {known['dropout_path_rate']!r}")
        if "roi" in known:
            roi = known["roi"]
            if not isinstance(roi, (list, tuple)) or not all(isinstance(r, int) and not isinstance(r, bool) for r in roi):
                raise ValueError(f"stored model config: roi must be a list of 3 integers, got {roi!r}")
            known["roi"] = tuple(roi)
        config = cls(**known)
        validate_model_config(config)
        return config


def validate_model_config(config: ModelConfig) -> None:
    """Refuse configs that cannot be built or that would allocate beyond the limits
    (:mod:`swinbob.limits`): checked before the network exists, so a hostile checkpoint asking for
    feature_size 1200 costs a message, not the machine's memory."""
    if config.spatial_dims != 3:
        raise ValueError(f"Swin-BOB is a 3D model: spatial_dims must be 3, got {config.spatial_dims}")
    validate_roi(config.roi)
    if config.feature_size <= 0 or config.feature_size % 12:
        raise ValueError(f"feature_size must be a positive multiple of 12 (Swin-UNETR heads), got {config.feature_size}")
    if config.feature_size > (most := limit("max_feature_size")):
        raise ValueError(f"feature_size {config.feature_size} is larger than the limit {most} (--max_feature_size)")
    for name in ("in_channels", "out_channels"):
        value = getattr(config, name)
        if not 1 <= value <= (most := limit("max_channels")):
            raise ValueError(f"{name} must be in 1..{most} (--max_channels), got {value}")
    if not 0.0 <= config.dropout_path_rate < 1.0:
        raise ValueError(f"dropout_path_rate must be in [0, 1), got {config.dropout_path_rate}")


def validate_roi(roi: Sequence[int]) -> tuple[int, int, int]:
    """Return ``roi`` as a tuple, or raise a clear error if a side is not a positive multiple of 32."""
    roi = tuple(int(r) for r in roi)
    if len(roi) != 3:
        raise ValueError(f"ROI must have 3 sides (roi_x, roi_y, roi_z), got {roi}")
    bad = [r for r in roi if r <= 0 or r % ROI_MULTIPLE]
    if bad:
        raise ValueError(
            f"ROI {roi} is not valid for Swin-UNETR: every side must be a positive multiple of "
            f"{ROI_MULTIPLE} (the network downsamples by 2**5); e.g. use {tuple(max(ROI_MULTIPLE, round(r / ROI_MULTIPLE) * ROI_MULTIPLE) for r in roi)}"
        )
    return roi  # type: ignore[return-value]


def build_model(config: ModelConfig) -> torch.nn.Module:
    """Instantiate Swin-UNETR for ``config`` after checking it (:func:`validate_model_config`)."""
    validate_model_config(config)
    return SwinUNETR(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        feature_size=config.feature_size,
        dropout_path_rate=config.dropout_path_rate,
        use_checkpoint=config.use_checkpoint,
        use_v2=config.use_v2,
        spatial_dims=config.spatial_dims,
        norm_name=config.norm_name,
    )
