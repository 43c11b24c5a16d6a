"""ETTA: what is tuned, that it lowers entropy and changes the prediction, and that it leaves no trace."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from swinbob.infer.etta import (
    EttaConfig,
    adapt,
    adaptation_box,
    crop_windows,
    episode,
    etta_loss,
    etta_predict,
    foreground_fraction,
    integrate,
    marginal_entropy,
    norm_parameters,
    probabilities_and_entropy,
    sample_window_starts,
    voxel_entropy,
)
from swinbob.model import build_model
from swinbob.infer.outputs import foreground, probabilities
from swinbob.infer.window import WindowSettings, predict_logits
from tiny import WIDE_ROI, tiny_config

ROI = (16, 16, 16)
WINDOW = WindowSettings(ROI, sw_batch_size=2, overlap=0.25)
CONFIG = EttaConfig(steps=3, lr=5e-2, windows=2, seed=0)


def window_entropy(model: nn.Module, image: torch.Tensor, starts, roi, mode: str) -> float:
    """Mean normalised entropy of ``model`` on the given windows (no gradients): the ETTA loss."""
    with torch.no_grad():
        return float(voxel_entropy(model(crop_windows(image, starts, roi)), mode).mean())


class TinyNormNet(nn.Module):
    """Conv → affine InstanceNorm → LayerNorm over channels → dropout → head: fast on a CPU."""

    def __init__(self, out_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm3d(8, affine=True)
        self.lnorm = nn.LayerNorm(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Conv3d(8, out_channels, 1)
        self.dropout_modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dropout_modes.append(self.drop.training)
        h = torch.relu(self.inorm(self.conv(x)))
        h = self.lnorm(h.movedim(1, -1)).movedim(-1, 1)
        return self.head(self.drop(h))


def make_model(seed: int = 0) -> TinyNormNet:
    torch.manual_seed(seed)
    model = TinyNormNet()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))  # mostly background, some foreground
    return model.eval()


def make_image(seed: int, shape=(24, 20, 18)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1, *shape), generator=g)


def source(model, image):
    with torch.no_grad():
        return predict_logits(model, image, WINDOW)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_affine_normalisation_parameters_are_selected():
    names = [n for n, _ in norm_parameters(make_model())]
    assert names == ["inorm.weight", "inorm.bias", "lnorm.weight", "lnorm.bias"]


def test_swin_unetr_tunes_exactly_its_layernorms():
    model = build_model(tiny_config(roi=WIDE_ROI))
    selected = {n for n, _ in norm_parameters(model)}
    layernorms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
                  for p, _ in mod.named_parameters(recurse=False)}
    assert selected == layernorms and len(selected) > 0  # MONAI's decoder instance norms are not affine


def test_adaptation_changes_only_norm_parameters_and_lowers_window_entropy():
    model, image = make_model(), make_image(1)
    logits = source(model, image)
    before = snapshot(model)
    params = [p for _, p in norm_parameters(model)]
    norm_names = {n for n, _ in norm_parameters(model)}
    with episode(model, params):
        history = adapt(model, image, foreground(logits[0], "softmax"), params, "softmax", CONFIG, WINDOW)
        during = snapshot(model)
        frozen = [n for n, p in model.named_parameters() if p.requires_grad != (n in norm_names)]
        windows = [s for step in history for s in step["starts"]]
        entropy_adapted = window_entropy(model, image, windows, ROI, "softmax")
    entropy_source = window_entropy(model, image, windows, ROI, "softmax")
    changed = {k for k in before if not torch.equal(before[k], during[k])}
    assert changed == norm_names
    assert frozen == []
    assert entropy_adapted < entropy_source
    assert not any(model.dropout_modes)  # dropout stayed off throughout


def test_adapted_parameters_change_the_prediction_even_under_no_grad():
    model, image = make_model(), make_image(2)
    logits = source(model, image)
    with torch.no_grad():  # the upstream bug: adaptation under no_grad changed nothing
        outcome = etta_predict(model, image, logits, "softmax", CONFIG, WINDOW)
    assert outcome.applied, outcome.fallback
    source_probs = torch.softmax(logits[(0, slice(None), *outcome.box)], dim=0)
    assert not torch.allclose(outcome.probs, source_probs)
    assert outcome.info["entropy_adapted"] < outcome.info["entropy_source"]


def test_episode_restores_the_model_exactly():
    model, image = make_model(), make_image(3)
    model.train()
    model.head.bias.requires_grad_(False)  # a caller's own freezing must survive
    before = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    etta_predict(model, image, source(model.eval(), image), "softmax", CONFIG, WINDOW)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    model.train()
    etta_predict(model, image, source(model, image), "softmax", CONFIG, WINDOW)
    assert model.training  # the caller's mode is given back


def test_case_after_another_equals_case_alone_and_is_seeded():
    image_a, image_b = make_image(4), make_image(5)
    alone_model = make_model()
    alone = etta_predict(alone_model, image_b, source(alone_model, image_b), "softmax", CONFIG, WINDOW)
    model = make_model()
    etta_predict(model, image_a, source(model, image_a), "softmax", CONFIG, WINDOW)
    after = etta_predict(model, image_b, source(model, image_b), "softmax", CONFIG, WINDOW)
    assert after.box == alone.box
    assert torch.equal(after.probs, alone.probs)
    assert after.info == alone.info


def test_window_centres_come_from_the_foreground_and_fit_the_volume():
    fg = torch.zeros(40, 30, 20, dtype=torch.bool)
    fg[30:33, 5:7, 10] = True
    coords = torch.nonzero(fg)
    starts = sample_window_starts(coords, fg.shape, ROI, 8, np.random.default_rng(0))
    for start in starts:
        assert all(0 <= s <= dim - r for s, dim, r in zip(start, fg.shape, ROI))
        assert all(lo <= c < lo + r for lo, c, r in zip(start, (31, 6, 10), ROI))  # window covers the organ
    assert starts == sample_window_starts(coords, fg.shape, ROI, 8, np.random.default_rng(0))


@pytest.mark.parametrize("shape, organ, expected", [
    # x: 30..33 grown by 4 = 26..37 (11 < 16) -> widened around its centre to 23..39;
    # y: 1..11 widened to 16 but kept inside the volume -> 0..16; z: the whole 12 voxels.
    ((60, 50, 12), np.s_[30:33, 5:7, 4:6], (slice(23, 39), slice(0, 16), slice(0, 12))),
    # at the volume end: x: 57..59 grown by 4 = 53..60, widened to 16 and shifted inside: 44..60;
    # y: 10..30 grown by 4 = 6..34 (longer than the ROI: kept); z: 0..20 grown by 4, clipped: 0..24.
    ((60, 40, 100), np.s_[57:59, 10:30, 0:20], (slice(44, 60), slice(6, 34), slice(0, 24))),
])
def test_adaptation_box_covers_the_foreground_with_a_margin_one_roi_inside_and_integer_bounds(shape, organ, expected):
    fg = torch.zeros(*shape, dtype=torch.bool)
    fg[organ] = True
    box = adaptation_box(fg, ROI)
    assert box == expected
    assert all(type(b) is int for s in box for b in (s.start, s.stop))


def _logits(confidence: float, fg_fraction: float) -> torch.Tensor:
    logits = torch.zeros(2, 10, 10, 1)
    logits[0] = confidence
    logits[1, : int(fg_fraction * 10)] = 2 * confidence  # foreground rows
    return logits


def test_integration_weights_by_inverse_entropy_and_falls_back_when_adaptation_hurts():
    src, better = _logits(1.0, 0.5), _logits(3.0, 0.5)
    mixed, info = integrate(src, better, "softmax", collapse=0.5)
    h_s, h_a = info["entropy_source"], info["entropy_adapted"]
    expected_weight = (1 / h_a) / (1 / h_s + 1 / h_a)
    assert info["weight_adapted"] == pytest.approx(expected_weight) and expected_weight > 0.5
    assert torch.allclose(mixed, (1 - expected_weight) * src.softmax(0) + expected_weight * better.softmax(0))
    assert integrate(better, src, "softmax", 0.5)[0] is None  # entropy went up
    collapsed, info = integrate(src, _logits(3.0, 0.1), "softmax", collapse=0.5)
    assert collapsed is None and "collapsed" in info["fallback"]


@pytest.mark.parametrize("mode", ["softmax", "regions"])
def test_one_pass_probabilities_and_entropy_match_the_separate_ones(mode):
    logits = 3 * torch.randn(4, 9, 8, 7, generator=torch.Generator().manual_seed(0))
    box = logits[:, 1:8, 2:7, 1:6]  # a strided view, as etta_predict passes the source box
    probs, entropy = probabilities_and_entropy(box, mode)
    assert torch.allclose(probs, probabilities(box[None], mode)[0], atol=1e-6)
    assert entropy == pytest.approx(float(voxel_entropy(box[None], mode).mean()), rel=1e-5)
    fraction = foreground_fraction(foreground(box, mode))
    assert fraction == pytest.approx(float(foreground(box, mode).float().mean()))
    assert integrate(box, 2 * box, mode, 0.5, fraction)[1] == integrate(box, 2 * box, mode, 0.5)[1]


def test_without_foreground_or_norm_layers_etta_falls_back():
    model, image = make_model(), make_image(6)
    background = torch.zeros(1, 3, *image.shape[2:])
    background[:, 0] = 5.0
    assert etta_predict(model, image, background, "softmax", CONFIG, WINDOW).fallback.startswith("no foreground")
    plain = nn.Conv3d(1, 3, 1)
    assert "normalisation" in etta_predict(plain, image, source(plain, image), "softmax", CONFIG, WINDOW).fallback


def test_region_mode_uses_binary_entropy():
    model, image = make_model(), make_image(7)
    logits = source(model, image)
    outcome = etta_predict(model, image, logits, "regions", CONFIG, WINDOW)
    box = tuple(slice(lo, hi) for lo, hi in outcome.info["box"])
    p = torch.sigmoid(logits[(0, slice(None), *box)])
    binary = -(p * p.log() + (1 - p) * (1 - p).log()) / np.log(2.0)  # per region channel, in bits
    assert outcome.info["entropy_source"] == pytest.approx(float(binary.mean()), rel=1e-4)
    assert outcome.applied == (outcome.fallback is None)


@pytest.mark.parametrize("bad", [{"steps": 0}, {"windows": 0}, {"lr": 0.0}, {"collapse": 0.0}])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        EttaConfig(**bad)


@pytest.mark.gpu
def test_gpu_bf16_etta_on_swin_unetr_is_episodic():
    torch.manual_seed(0)
    model = build_model(tiny_config(roi=WIDE_ROI)).cuda().eval()
    image = torch.rand(1, 1, 80, 48, 40, device="cuda")
    window = WindowSettings((64, 32, 32), 4, 0.5, amp_dtype=torch.bfloat16)
    before = snapshot(model)
    with torch.no_grad():
        logits = predict_logits(model, image, window)
    outcome = etta_predict(model, image, logits, "softmax", EttaConfig(), window)
    assert outcome.applied or outcome.fallback
    assert len(outcome.info.get("losses", [])) == EttaConfig().steps
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.6])
def test_adapted_window_uses_the_configured_overlap(monkeypatch, overlap):
    """Only the adapted pass over the box runs at ``EttaConfig.overlap``; the caller's settings stand."""
    import swinbob.infer.etta as etta_module

    calls: list[tuple[tuple[int, ...], WindowSettings]] = []

    def spy(model, image, settings):
        calls.append((tuple(image.shape[2:]), settings))
        return predict_logits(model, image, settings)

    monkeypatch.setattr(etta_module, "predict_logits", spy)
    model, image = make_model(), make_image(3, shape=(40, 36, 20))
    window = WindowSettings(ROI, sw_batch_size=2, overlap=0.5)
    logits = source(model, image)
    outcome = etta_predict(model, image, logits, "softmax", EttaConfig(steps=1, windows=1, overlap=overlap), window)
    assert len(calls) == 1
    shape, settings = calls[0]
    assert shape == tuple(s.stop - s.start for s in outcome.box)
    assert settings.overlap == overlap
    assert settings == WindowSettings(ROI, sw_batch_size=2, overlap=overlap)  # all else as the caller's
    assert window.overlap == 0.5  # the caller's settings are not mutated (frozen or not)


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_overlap_is_refused_with_its_value(overlap):
    with pytest.raises(ValueError, match=f"overlap.*{overlap}"):
        EttaConfig(overlap=overlap)


def test_default_overlap_matches_the_source_default():
    # entropies of the two predictions are compared, so by default they are tiled alike (see EttaConfig)
    assert EttaConfig().overlap == WindowSettings(ROI).overlap


# ----------------------------------------------------------------------------------------------
# Fallback thresholds and window placement (narrow tests of etta internals, named after what
# they pin down, so that a rework of etta.py can update them in one place)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("collapse, adapted_fg, falls_back", [
    (0.9, 0.1, False),  # 0.5 -> 0.1 is a shrink by 80 %: allowed up to 90 %
    (0.7, 0.1, True),   # ... but not up to 70 %
    (0.5, 0.3, False),  # shrink by 40 % < 50 %
    (0.5, 0.2, True),   # shrink by 60 % > 50 %
    (0.2, 0.3, True),   # shrink by 40 % > 20 %
    (0.2, 0.5, False),  # no shrink
    (1.0, 0.0, False),  # collapse 1.0: any shrink is tolerated, even to nothing
])
def test_collapse_fallback_at_several_thresholds(collapse, adapted_fg, falls_back):
    """Fall back when the foreground shrinks by more than ``collapse`` (source foreground 0.5)."""
    mixed, info = integrate(_logits(1.0, 0.5), _logits(3.0, adapted_fg), "softmax", collapse=collapse)
    assert info["foreground_source"] == pytest.approx(0.5) and info["foreground_adapted"] == pytest.approx(adapted_fg)
    assert info["entropy_adapted"] < info["entropy_source"]  # only the foreground test can fail here
    assert (mixed is None) == falls_back
    assert ("collapsed" in info.get("fallback", "")) == falls_back


@pytest.mark.parametrize("adapted_confidence, falls_back", [(0.5, True), (1.0, True), (1.05, False), (3.0, False)])
def test_entropy_fallback_when_adaptation_does_not_lower_the_entropy(adapted_confidence, falls_back):
    """Equal entropy counts as "did not decrease"; any decrease is applied (same foreground)."""
    mixed, info = integrate(_logits(1.0, 0.5), _logits(adapted_confidence, 0.5), "softmax", collapse=0.5)
    assert (mixed is None) == falls_back
    assert (info.get("fallback") == "entropy did not decrease") == falls_back
    if not falls_back:
        assert 0.5 < info["weight_adapted"] < 1.0


def test_adaptation_windows_are_centred_on_the_source_foreground():
    """Every window that ``adapt`` tunes on has a foreground voxel at its centre (a small organ far
    from the borders, so no window is clipped; random windows would rarely see it)."""
    model, image = make_model(), make_image(8, shape=(64, 60, 48))
    fg = torch.zeros(image.shape[2:], dtype=torch.bool)
    fg[40:43, 30:32, 20:22] = True
    params = [p for _, p in norm_parameters(model)]
    with episode(model, params):
        history = adapt(model, image, fg, params, "softmax", EttaConfig(steps=4, windows=3, seed=1), WINDOW)
    starts = [s for step in history for s in step["starts"]]
    assert len(starts) == 12
    for start in starts:
        centre = tuple(lo + r // 2 for lo, r in zip(start, ROI))
        assert fg[centre], f"window at {start} is not centred on the foreground"


def test_etta_loss_is_the_mean_softmax_entropy_on_the_first_windows():
    """Narrow (etta internals): the first recorded loss is the source model's mean normalised
    softmax entropy on the first step's foreground-centred windows."""
    model, image = make_model(), make_image(2)
    logits = source(model, image)
    fg = foreground(logits[0], "softmax")
    starts = sample_window_starts(torch.nonzero(fg), fg.shape, ROI, CONFIG.windows, np.random.default_rng(CONFIG.seed))
    expected = window_entropy(model, image, starts, ROI, "softmax")
    assert 0 < expected < 1
    outcome = etta_predict(model, image, logits, "softmax", CONFIG, WINDOW)
    assert len(outcome.info["losses"]) == CONFIG.steps
    assert outcome.info["losses"][0] == pytest.approx(expected, rel=1e-5)


def test_a_fallback_of_the_integration_is_reported_by_etta_predict(monkeypatch):
    import swinbob.infer.etta as etta_module

    monkeypatch.setattr(etta_module, "integrate", lambda *a, **k: (None, {"fallback": "entropy did not decrease"}))
    model, image = make_model(), make_image(2)
    outcome = etta_predict(model, image, source(model, image), "softmax", CONFIG, WINDOW)
    assert not outcome.applied and outcome.fallback == "entropy did not decrease"
    plain = nn.Conv3d(1, 3, 1)
    assert etta_predict(plain, image, source(plain, image), "softmax", CONFIG, WINDOW).fallback == \
        "model has no affine normalisation parameters"
    assert foreground_fraction(torch.ones(1, 1, 1, dtype=torch.bool)) == 1.0


def test_crop_windows_cuts_each_axis_at_its_start_and_zero_pads_past_the_border():
    from swinbob.infer.etta import crop_windows

    image = torch.arange(2 * 10 * 12 * 14, dtype=torch.float32).reshape(1, 2, 10, 12, 14) + 1
    roi = (8, 6, 4)  # decreasing, so that an axis cut with another axis's size shows
    starts = [(3, 4, 0), (7, 9, 12), (8, 1, 2)]  # the second runs past every border, the third has y < x
    windows = crop_windows(image, starts, roi)
    assert windows.shape == (3, 2, *roi)
    for window, (x, y, z) in zip(windows, starts):
        expected = torch.zeros(2, *roi)
        part = image[0, :, x:x + roi[0], y:y + roi[1], z:z + roi[2]]
        expected[:, :part.shape[1], :part.shape[2], :part.shape[3]] = part
        assert torch.equal(window, expected)


def test_window_centres_without_foreground_are_spread_over_the_volume_and_every_voxel_can_be_a_centre():
    shape = (30, 24, 20)
    starts = sample_window_starts(torch.zeros(0, 3, dtype=torch.long), shape, ROI, 200, np.random.default_rng(0))
    array = np.asarray(starts)
    assert array.shape == (200, 3)
    assert np.all(array >= 0) and np.all(array <= np.asarray(shape) - np.asarray(ROI))
    assert all(len(np.unique(array[:, axis])) > 3 for axis in range(3))  # not a fixed corner
    two = torch.tensor([[20, 10, 9], [21, 10, 9]])  # foreground of two voxels: both get picked
    picked = {s[0] + ROI[0] // 2 for s in sample_window_starts(two, shape, ROI, 40, np.random.default_rng(1))}
    assert picked == {20, 21}
    corner = torch.tensor([[0, 0, 0]])  # clipped to the volume: a window may start at 0 ...
    assert sample_window_starts(corner, shape, ROI, 1, np.random.default_rng(0)) == [(0, 0, 0)]
    exact = sample_window_starts(torch.tensor([[15, 23, 19]]), (16, 24, 20), ROI, 1, np.random.default_rng(0))
    assert exact == [(0, 8, 4)]  # ... and an axis exactly one ROI long has the one start 0


@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "at least one step and one window"), ({"windows": 0}, "at least one step and one window"),
    ({"lr": 0.0}, "learning rate must be positive, got 0.0"), ({"collapse": 1.5}, r"collapse threshold must be in \(0, 1\], got 1.5"),
    ({"diversity": -0.1}, r"diversity and sharpness must be >= 0 and min_entropy in \[0, 1\], got -0.1, 1.0, 0.0"),
    ({"sharpness": -0.1}, r"diversity and sharpness must be >= 0 and min_entropy in \[0, 1\], got 0.0, -0.1, 0.0"),
    ({"min_entropy": 1.5}, r"diversity and sharpness must be >= 0 and min_entropy in \[0, 1\], got 0.0, 1.0, 1.5"),
])
def test_invalid_settings_name_the_setting_and_value(bad, message):
    with pytest.raises(ValueError, match=message):
        EttaConfig(**bad)
    assert EttaConfig(collapse=1.0).collapse == 1.0  # the closed end of (0, 1]
    assert EttaConfig(sharpness=0.0, min_entropy=1.0).min_entropy == 1.0  # closed ends: allowed


def test_voxel_entropy_is_per_voxel_in_both_modes_and_a_bare_norm_layer_is_tunable():
    logits = torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    p = torch.sigmoid(logits)
    binary = -(p * p.log() + (1 - p) * (1 - p).log()).mean(dim=1) / np.log(2.0)
    assert torch.allclose(voxel_entropy(logits, "regions"), binary, atol=1e-6)
    assert voxel_entropy(logits, "softmax").shape == (2, 4, 5, 6)
    assert [n for n, _ in norm_parameters(nn.LayerNorm(4))] == ["weight", "bias"]


def test_marginal_entropy_is_the_normalised_entropy_of_the_voxel_averaged_prediction():
    """ETTA's diversity term against scipy: softmax, the entropy of the class distribution averaged
    over every voxel of the batch / log C; regions, the mean over channels of the Bernoulli entropy
    of the averaged sigmoid / log 2; 0 (finite) for a collapsed prediction; float32 from bf16."""
    from scipy.stats import entropy

    logits = 3.0 * torch.randn(2, 4, 3, 5, 6, generator=torch.Generator().manual_seed(5))
    mean_softmax = torch.softmax(logits.double(), 1).transpose(0, 1).reshape(4, -1).mean(1).numpy()
    assert float(marginal_entropy(logits, "softmax")) == pytest.approx(entropy(mean_softmax) / np.log(4), rel=1e-5)
    mean_sigmoid = torch.sigmoid(logits.double()).transpose(0, 1).reshape(4, -1).mean(1).numpy()
    regions = np.mean([entropy([p, 1 - p]) for p in mean_sigmoid]) / np.log(2)
    assert float(marginal_entropy(logits, "regions")) == pytest.approx(regions, rel=1e-5)
    collapsed = torch.full((1, 3, 4, 4, 4), -40.0)
    collapsed[:, 0] = 40.0
    for mode in ("softmax", "regions"):
        assert 0.0 <= float(marginal_entropy(collapsed, mode)) < 1e-5
    assert marginal_entropy(logits.to(torch.bfloat16), "softmax").dtype == torch.float32


@pytest.mark.parametrize("mode", ["softmax", "regions"])
def test_etta_loss_subtracts_the_weighted_marginal_entropy_only_when_diversity_is_set(mode):
    logits = 2.0 * torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(7))
    mean_voxel = voxel_entropy(logits, mode).mean()
    assert torch.equal(etta_loss(logits, mode, 0.0), mean_voxel)
    expected = mean_voxel - 0.25 * marginal_entropy(logits, mode)
    assert torch.allclose(etta_loss(logits, mode, 0.25), expected, rtol=0, atol=1e-7)
    assert float(marginal_entropy(logits, mode)) > 0.5  # the term is not negligible here


def test_min_entropy_keeps_a_confident_source_and_adapts_at_the_threshold():
    model, image = make_model(), make_image(2)
    logits = source(model, image)
    box = adaptation_box(foreground(logits[0], "softmax"), ROI)
    h = probabilities_and_entropy(logits[(0, slice(None), *box)], "softmax")[1]
    assert 0 < h < 0.9
    above = dataclasses.replace(CONFIG, min_entropy=h + 0.05)
    kept = etta_predict(model, image, logits, "softmax", above, WINDOW)
    assert not kept.applied and kept.info == {"entropy_source": h}
    assert kept.fallback == f"source confident (entropy {h:.4f} < {h + 0.05:g})"
    at = etta_predict(model, image, logits, "softmax", dataclasses.replace(CONFIG, min_entropy=h), WINDOW)
    assert not (at.fallback or "").startswith("source confident") and len(at.info["losses"]) == CONFIG.steps


def test_diversity_enters_the_adaptation_loss():
    """The recorded first loss is the ETTA loss on the first windows: lower by diversity x marginal entropy."""
    model, image = make_model(), make_image(2)
    logits = source(model, image)
    plain = etta_predict(model, image, logits, "softmax", CONFIG, WINDOW).info["losses"][0]
    diverse = etta_predict(model, image, logits, "softmax", dataclasses.replace(CONFIG, diversity=1.0), WINDOW)
    assert diverse.info["losses"][0] < plain - 0.05


def test_decoder_norms_make_non_affine_instance_norms_adaptable_for_the_episode_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4), nn.ReLU(), nn.Conv3d(4, 3, 1)).eval()
    image = make_image(2)
    logits = source(model, image)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert etta_predict(model, image, logits, "softmax", CONFIG, WINDOW).fallback == \
        "model has no affine normalisation parameters"
    adapted = etta_predict(model, image, logits, "softmax", dataclasses.replace(CONFIG, decoder_norms=True), WINDOW)
    assert len(adapted.info["losses"]) == CONFIG.steps  # it adapted the added scale and shift
    assert model.state_dict().keys() == before.keys() and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_integration_sharpness_sets_the_weight_and_a_large_one_stays_finite():
    src, better = _logits(1.0, 0.5), _logits(3.0, 0.5)
    h_s, h_a = (integrate(src, better, "softmax", 0.5)[1][k] for k in ("entropy_source", "entropy_adapted"))
    assert integrate(src, better, "softmax", 0.5, sharpness=0.0)[1]["weight_adapted"] == 0.5
    two = integrate(src, better, "softmax", 0.5, sharpness=2.0)[1]["weight_adapted"]
    assert two == pytest.approx(h_a ** -2 / (h_s ** -2 + h_a ** -2))
    mixed, info = integrate(src, _logits(30.0, 0.5), "softmax", 0.5, sharpness=200.0)  # entropy ~1e-13 -> 1e-8
    assert info["weight_adapted"] == 1.0 and torch.isfinite(mixed).all()
    model, image = make_model(), make_image(2)
    outcome = etta_predict(model, image, source(model, image), "softmax", dataclasses.replace(CONFIG, sharpness=0.0), WINDOW)
    assert outcome.applied and outcome.info["weight_adapted"] == 0.5  # etta_predict passes the setting on
