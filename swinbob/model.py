"""Build the Swin-BOB network: MONAI's Swin-UNETR configured from a task and a few flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import SwinUNETR

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
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "roi" in known:
            known["roi"] = tuple(int(r) for r in known["roi"])
        return cls(**known)


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
    """Instantiate Swin-UNETR for ``config`` after checking ROI and feature size."""
    validate_roi(config.roi)
    if config.feature_size <= 0 or config.feature_size % 12:
        raise ValueError(f"feature_size must be a positive multiple of 12 (Swin-UNETR heads), got {config.feature_size}")
    if config.spatial_dims != 3:
        raise ValueError(f"Swin-BOB is a 3D model: spatial_dims must be 3, got {config.spatial_dims}")
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
