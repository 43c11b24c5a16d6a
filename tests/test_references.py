"""Core computations against independent references: the fused-attention Swin-UNETR against plain
MONAI on MONAI's own SwinUNETR test grid, the project's sliding-window logits against
``monai.inferers.sliding_window_inference``, and the BraTS label -> region conversion (with the
ignore value 255) against a hand-computed case."""

import copy

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import PatchMerging, PatchMergingV2

from swinbob.runtime import fast
from swinbob.data.transforms import LabelsToRegionsd
from swinbob.infer.window import WindowSettings, predict_logits
from swinbob.labels import IGNORE_LABEL
from swinbob.model import ModelConfig, build_model
from swinbob.tasks import get_task

# The 3-D cases of MONAI's TEST_CASE_SWIN_UNETR (tests/networks/nets/test_swin_unetr.py): depths
# [2,1,1,1] / [1,2,1,1], feature_size 12, image 64x32x192, 1 -> 2 channels, instance norm,
# attn_drop 0.4, use_checkpoint True/False, downsample cycling through MONAI's merging modes.
MONAI_GRID = [
    ([2, 1, 1, 1], True, "mergingv2"),
    ([2, 1, 1, 1], False, "merging"),
    ([1, 2, 1, 1], True, "mergingv2"),
    ([1, 2, 1, 1], False, "merging"),
    ([1, 2, 1, 1], False, PatchMerging),
    ([2, 1, 1, 1], True, PatchMergingV2),
]


def _plain_and_fused(depths, use_checkpoint, downsample, dtype):
    torch.manual_seed(0)
    plain = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=depths, norm_name="instance",
                      attn_drop_rate=0.4, use_checkpoint=use_checkpoint, spatial_dims=3, downsample=downsample)
    plain = plain.to(dtype).eval()
    fused = fast.accelerate(copy.deepcopy(plain), sdpa=True, cached_masks=True)
    assert any(isinstance(m, fast.SDPAWindowAttention) for m in fused.modules())
    return plain, fused


def _max_relative_difference(plain, fused, shape, dtype) -> float:
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = plain(x), fused(x)
    assert got.shape == (shape[0], 2, *shape[2:])
    return (got - expected).abs().max().item() / expected.abs().max().item()


@pytest.mark.parametrize("depths, use_checkpoint, downsample", MONAI_GRID)
def test_fused_attention_model_equals_plain_monai_on_monai_test_grid(depths, use_checkpoint, downsample):
    """MONAI's network settings on a shorter image (64x32x64, one sample), float32: within 1e-5."""
    plain, fused = _plain_and_fused(depths, use_checkpoint, downsample, torch.float32)
    assert _max_relative_difference(plain, fused, (1, 1, 64, 32, 64), torch.float32) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("depths, use_checkpoint, downsample", MONAI_GRID)
def test_fused_attention_model_equals_plain_monai_on_monai_test_grid_full_size_float64(depths, use_checkpoint, downsample):
    """MONAI's exact grid input (2 x 1 x 64 x 32 x 192) in float64: within 1e-10 (about 100 s each on 2 CPU cores)."""
    plain, fused = _plain_and_fused(depths, use_checkpoint, downsample, torch.float64)
    assert _max_relative_difference(plain, fused, (2, 1, 64, 32, 192), torch.float64) <= 1e-10


def test_sliding_window_logits_equal_monai_sliding_window_inference():
    """Tolerance: 1e-5 of the largest |logit| (float32, same windows and Gaussian weights; the
    project's path runs the fused-attention model, the reference plain MONAI)."""
    torch.manual_seed(0)
    roi = (64, 32, 32)
    plain = build_model(ModelConfig(in_channels=1, out_channels=3, feature_size=12, roi=roi)).eval()
    fused = fast.accelerate(copy.deepcopy(plain), sdpa=True, cached_masks=True)
    image = torch.rand(1, 1, 72, 36, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = predict_logits(fused, image, WindowSettings(roi, sw_batch_size=2, overlap=0.5))
        reference = sliding_window_inference(image, roi, 2, plain, overlap=0.5, mode="gaussian")
    assert ours.shape == reference.shape == (1, 3, 72, 36, 32)  # 2 x 2 x 1 windows
    assert (ours - reference).abs().max().item() <= 1e-5 * reference.abs().max().item()


def test_brats_labels_to_regions_with_ignored_voxels_match_a_hand_computed_case():
    # BraTS 2023 labels: 1 necrotic core (NCR), 2 oedema (ED), 3 enhancing tumour (ET).
    # TC = {1, 3}, WT = {1, 2, 3}, ET = {3}; 255 (SOLF's ignore value) stays 255 in every region.
    raw = torch.tensor([0, 1, 2, 3, 255, 2, 0, 3], dtype=torch.float32).reshape(1, 2, 2, 2)
    expected = {  # per voxel in the order above
        "TC": [0, 1, 0, 1, 255, 0, 0, 1],
        "WT": [0, 1, 1, 1, 255, 1, 0, 1],
        "ET": [0, 0, 0, 1, 255, 0, 0, 1],
    }
    task = get_task("brats")
    assert list(task.regions) == ["TC", "WT", "ET"]
    regions = LabelsToRegionsd("label", task.regions)({"label": raw})["label"]
    assert regions.shape == (3, 2, 2, 2)
    for channel, name in enumerate(task.regions):
        assert regions[channel].flatten().tolist() == expected[name], name
    assert IGNORE_LABEL == 255


def test_brats_regions_default_to_the_2023_labels_and_refuse_other_et_labels():
    from swinbob.labels import brats_regions
    # BraTS 2023: ET is label 3; TC = NCR + ET, WT = NCR + ED + ET (BraTS 2021 used 4 for ET)
    assert brats_regions() == {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}
    assert brats_regions(4) == {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
    with pytest.raises(ValueError) as caught:
        brats_regions(2)
    assert str(caught.value) == "BraTS enhancing-tumour label must be 3 (BraTS 2023) or 4 (BraTS 2021), got 2"
