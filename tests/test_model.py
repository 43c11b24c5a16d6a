"""Model construction: shapes, gradients and early, clear configuration errors."""

import pytest
import torch

from swinbob.model import ModelConfig, build_model, validate_roi
from swinbob.tasks import get_task


# The instance-normalised bottleneck sits at ROI/32 and needs more than one voxel: ROI >= 64.
ROI = 64


def tiny(task_name: str = "btcv", **kw) -> ModelConfig:
    return ModelConfig.from_task(get_task(task_name), feature_size=12, roi=(ROI,) * 3, **kw)


@pytest.mark.parametrize("task_name, cin, cout", [("btcv", 1, 14), ("ukbob", 4, 73), ("brats", 4, 3)])
def test_forward_shapes_follow_the_task(task_name, cin, cout):
    model = build_model(tiny(task_name)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, cin, ROI, ROI, ROI))
    assert out.shape == (1, cout, ROI, ROI, ROI)


def test_every_trainable_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build_model(tiny("btcv", use_checkpoint=True))
    loss = model(torch.randn(1, 1, ROI, ROI, ROI)).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert missing == []


def test_use_v2_builds_the_v2_encoder():
    v1 = build_model(tiny())
    v2 = build_model(tiny(use_v2=True))
    assert sum(p.numel() for p in v2.parameters()) > sum(p.numel() for p in v1.parameters())


@pytest.mark.parametrize("roi", [(96, 96, 80), (100, 96, 96), (0, 32, 32)])
def test_roi_not_a_multiple_of_32_is_rejected_at_build_time(roi):
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(ModelConfig(in_channels=1, out_channels=14, feature_size=12, roi=roi))


def test_validate_roi_suggests_a_valid_size():
    with pytest.raises(ValueError, match=r"\(96, 96, 64\)"):
        validate_roi((96, 100, 70))


def test_feature_size_must_be_a_multiple_of_12():
    with pytest.raises(ValueError, match="feature_size"):
        build_model(ModelConfig(in_channels=1, out_channels=14, feature_size=20, roi=(32, 32, 32)))


def test_config_round_trips_through_plain_dict():
    config = tiny("ukbob", dropout_path_rate=0.1)
    assert ModelConfig.from_dict(config.to_dict()) == config
