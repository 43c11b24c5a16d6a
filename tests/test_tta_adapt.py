"""Self-training adaptation (``--tta_adapt selftrain``): it corrects a constructed scanner shift,
leaves a confident clean scan alone, falls back when it goes wild, and leaves no trace."""

import numpy as np
import pytest
import torch
from torch import nn

from swinbob.infer.selftrain import (
    SelfTrainConfig, augment_windows, changed_share, masked_pseudo_label_loss, pseudo_labels, selftrain_predict,
)
from swinbob.infer.window import WindowSettings, predict_logits
from swinbob.model import build_model
from tiny import WIDE_ROI, tiny_config

ROI = (16, 16, 16)
WINDOW = WindowSettings(ROI, sw_batch_size=2, overlap=0.25)
CONFIG = SelfTrainConfig(steps=5, lr=0.02, windows=2, seed=0)
SHAPE = (24, 24, 24)


class ThresholdNet(nn.Module):
    """An intensity threshold at 0.5 behind an eval-mode BatchNorm: the norm's scale and shift are
    the scanner calibration that adaptation may re-learn (foreground logit 40·(norm(x) − 0.5))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return torch.cat([torch.zeros_like(h), 40.0 * (h - 0.5)], dim=1)


def make_model() -> ThresholdNet:
    return ThresholdNet().eval()


def make_case(gain: float) -> tuple[torch.Tensor, np.ndarray]:
    """A ball (radius 8) on a zero background whose intensity ramps along x from 0.84 to 1.27,
    times ``gain`` (a scanner that images it darker); and the ball as the true label."""
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in SHAPE], indexing="ij"))
    ball = (grid ** 2).sum(0) <= 8 ** 2
    ramp = 0.84 + 0.43 * (grid[0] + 8) / 16
    image = np.where(ball, ramp, 0.0) * gain
    return torch.as_tensor(image, dtype=torch.float32)[None, None], ball


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def run(model: nn.Module, image: torch.Tensor, config: SelfTrainConfig = CONFIG):
    with torch.no_grad():
        logits = predict_logits(model, image, WINDOW)
    outcome = selftrain_predict(model, image, logits, "softmax", config, WINDOW)
    labels = logits[0].argmax(0).clone()
    source = labels.clone()
    if outcome.applied:
        labels[outcome.box] = outcome.probs.argmax(0)
    return source.numpy() == 1, labels.numpy() == 1, outcome


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_darker_scanner_is_corrected_toward_the_truth():
    image, truth = make_case(gain=0.55)  # the ball's dark end falls below the source threshold
    source, adapted, outcome = run(make_model(), image)
    assert outcome.applied, outcome.fallback
    assert dice(source, truth) < 0.97  # the shift costs the source model
    assert dice(adapted, truth) > dice(source, truth) + 0.02
    assert (adapted & truth).sum() > (source & truth).sum()  # found the dark voxels
    assert not (adapted & ~truth).any()  # and did not spill into the background


def test_a_confident_clean_scan_is_left_unchanged():
    image, truth = make_case(gain=1.0)
    source, adapted, outcome = run(make_model(), image)
    assert dice(source, truth) == 1.0
    assert np.array_equal(adapted, source)
    assert outcome.info["masked_share"] == 1.0  # every voxel confident: the teacher's labels are the targets


@pytest.mark.parametrize("max_change, falls_back", [(0.02, True), (0.5, False)])
def test_an_adaptation_that_changes_too_much_falls_back_to_the_teacher(max_change, falls_back):
    image, _ = make_case(gain=0.55)
    config = SelfTrainConfig(steps=5, lr=0.02, windows=2, seed=0, max_change=max_change)
    source, adapted, outcome = run(make_model(), image, config)
    assert 0.02 < outcome.info["changed"] < 0.5  # the correction relabels a few percent of the foreground
    assert outcome.applied is not falls_back
    if falls_back:
        assert "changed" in outcome.fallback
        assert np.array_equal(adapted, source)


def test_episodic_and_deterministic_for_a_seed():
    model = make_model()
    model.norm.bias.requires_grad_(False)  # a caller's own freezing must survive
    before, flags = snapshot(model), {n: p.requires_grad for n, p in model.named_parameters()}
    dark, _ = make_case(gain=0.55)
    other, _ = make_case(gain=0.6)
    *_, first = run(model, dark)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training
    model.norm.bias.requires_grad_(True)
    with torch.no_grad():
        logits = predict_logits(model, other, WINDOW)
    selftrain_predict(model.train(), other, logits, "softmax", CONFIG, WINDOW)  # another case in between
    assert model.training  # the caller's mode is given back
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # eval mode inside: no BN stats
    model.eval()
    *_, again = run(model, dark)
    assert torch.equal(first.probs, again.probs) and first.info == again.info
    *_, reseeded = run(model, dark, SelfTrainConfig(steps=5, lr=0.02, windows=2, seed=1))
    assert reseeded.info["losses"] != first.info["losses"]  # the seed picks windows and augmentations


def test_pseudo_labels_keep_only_confident_voxels_in_both_modes():
    logits = torch.tensor([[[0.0, 0.0]], [[5.0, 0.1]]])[None]  # (1, 2, 1, 2): confident fg, then a coin toss
    labels, mask = pseudo_labels(logits, "softmax", 0.9)
    assert labels.tolist() == [[[1, 1]]] and mask.tolist() == [[[True, False]]]
    region_labels, region_mask = pseudo_labels(torch.tensor([[[-4.0, 0.2]]])[None], "regions", 0.9)
    assert region_labels.tolist() == [[[[0.0, 1.0]]]] and region_mask.tolist() == [[[[True, False]]]]


def test_loss_is_the_cross_entropy_over_the_masked_voxels_only():
    logits = torch.tensor([[[2.0, -1.0, 0.5]], [[0.0, 1.0, 0.5]]])[None]  # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 1]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-2.0))) / 2
    assert float(masked_pseudo_label_loss(logits, labels, mask, "softmax")) == pytest.approx(expected, rel=1e-5)
    assert float(masked_pseudo_label_loss(logits, labels, torch.zeros_like(mask), "softmax")) == 0.0


def test_augmentation_is_seeded_and_identity_at_strength_zero():
    windows = torch.rand(2, 1, 4, 4, 4)
    assert torch.equal(augment_windows(windows, 0.0, torch.Generator().manual_seed(0)), windows)
    a = augment_windows(windows, 1.0, torch.Generator().manual_seed(3))
    b = augment_windows(windows, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, windows)


def test_changed_share_counts_decisions_over_the_union_of_foregrounds():
    teacher = torch.tensor([[0.9, 0.2, 0.2, 0.9], [0.1, 0.8, 0.8, 0.1]])  # bg, fg, fg, bg
    adapted = torch.tensor([[0.9, 0.2, 0.7, 0.4], [0.1, 0.8, 0.3, 0.6]])  # bg, fg, bg, fg
    assert changed_share(teacher, adapted, "softmax") == pytest.approx(2 / 3)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=0.0), dict(confidence=0.4), dict(confidence=1.0),
                                 dict(mix=0.0), dict(max_change=0.0), dict(augment=-1.0), dict(overlap=1.0)])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError, match="self-training"):
        SelfTrainConfig(**bad)


def test_swin_unetr_with_decoder_norms_is_episodic():
    torch.manual_seed(0)
    model = build_model(tiny_config(out_channels=3, roi=WIDE_ROI)).eval()
    before = snapshot(model)
    window = WindowSettings(WIDE_ROI, sw_batch_size=1, overlap=0.25)
    image = torch.randn(1, 1, *WIDE_ROI)
    with torch.no_grad():
        logits = predict_logits(model, image, window)
    config = SelfTrainConfig(steps=1, windows=1, confidence=0.5, decoder_norms=True, max_change=1.0, collapse=1.0)
    outcome = selftrain_predict(model, image, logits, "softmax", config, window)
    assert outcome.fallback is None or "foreground" in outcome.fallback
    assert snapshot(model).keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_evaluation_engine_runs_selftrain_when_asked(tmp_path):
    from swinbob.data.transforms import DataConfig
    from swinbob.infer.evaluate import ETTA, NO_ETTA, EvalSettings, predict_case
    from swinbob.tasks import get_task

    task = get_task("btcv")
    image, truth = make_case(gain=0.55)
    settings = EvalSettings(task=task, data=DataConfig.from_task(task, roi=ROI), window=WINDOW, output_dir=tmp_path,
                            methods=(NO_ETTA, ETTA), adapt="selftrain", selftrain=CONFIG)
    labels, record = predict_case(make_model(), image[0], settings)
    _, adapted, _ = run(make_model(), image)
    assert np.array_equal(labels[ETTA].numpy() == 1, adapted)
    assert dice(labels[ETTA].numpy() == 1, truth) > dice(labels[NO_ETTA].numpy() == 1, truth)
    assert record["applied"] and "changed" in record  # the self-training record, not ETTA's entropies


def test_command_lines_select_selftrain_and_refuse_bad_settings():
    from swinbob.errors import ConfigError
    from swinbob.infer import cli as eval_cli
    from swinbob.infer import predict

    args = eval_cli.build_parser("btcv").parse_args(["--tta_adapt", "selftrain", "--selftrain_lr", "0.01", "--etta_seed", "3"])
    config = eval_cli.selftrain_config(args)
    assert (args.tta_adapt, config.lr, config.seed) == ("selftrain", 0.01, 3)
    bad = eval_cli.build_parser("btcv").parse_args(["--selftrain_confidence", "1.5"])
    with pytest.raises(ConfigError, match="--selftrain_.*confidence"):
        eval_cli.selftrain_config(bad)
    argv = predict.evaluate_argv(predict.build_parser().parse_args(["-i", "in", "-o", "out", "-m", "m.pt",
                                                                    "--tta_adapt", "selftrain", "--tta", "flip"]))
    assert "--etta" in argv and "--tta_adapt=selftrain" in argv and "--tta=flip" in argv
