"""Losses, learning-rate schedule and the training step (no Swin-UNETR needed: fast)."""

import math

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from swinbob.labels import IGNORE_LABEL
from swinbob.train.losses import MaskedDiceCELoss, MaskedRegionLoss, build_loss, masked_soft_dice_loss
from swinbob.tasks import get_task
from swinbob.train.engine import learning_rate, train_step


def _labels(num_classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (2, 1, 6, 6, 6), generator=g).float()


def _loss_and_grad(loss_fn, logits, target):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("kind", ["softmax", "regions"])
def test_ignored_voxels_change_neither_loss_nor_gradient(kind):
    torch.manual_seed(0)
    if kind == "softmax":
        loss_fn, target = MaskedDiceCELoss(), _labels(5)
        ignored = torch.zeros_like(target, dtype=torch.bool)
        ignored[:, :, :3] = True
        target[ignored] = IGNORE_LABEL
        channels, mask = 5, ignored.expand(-1, 5, -1, -1, -1)
    else:
        loss_fn = MaskedRegionLoss(bce_weight=1.0)
        target = (torch.rand(2, 3, 6, 6, 6) > 0.5).float()
        mask = torch.zeros_like(target, dtype=torch.bool)
        mask[:, :, :3] = True
        target[mask] = IGNORE_LABEL
        channels = 3
    logits = torch.randn(2, channels, 6, 6, 6)
    loss_a, grad_a = _loss_and_grad(loss_fn, logits, target)
    changed = torch.where(mask, 100 * torch.randn_like(logits), logits)
    loss_b, grad_b = _loss_and_grad(loss_fn, changed, target)
    assert loss_a.item() == loss_b.item()
    assert torch.all(grad_a[mask] == 0) and torch.all(grad_b[mask] == 0)
    assert torch.any(grad_a[~mask] != 0)


@pytest.mark.parametrize("squared, nr, dr", [(False, 0.0, 1e-6), (True, 1e-5, 1e-5)])
def test_softmax_loss_equals_monai_dicece_without_ignored_voxels(squared, nr, dr):
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 6, 6, 6), _labels(4)
    ours = MaskedDiceCELoss(squared_pred=squared, smooth_nr=nr, smooth_dr=dr)(logits, target)
    monai = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=squared, smooth_nr=nr, smooth_dr=dr)(logits, target)
    assert ours.item() == pytest.approx(monai.item(), rel=1e-5)


def test_region_loss_equals_monai_sigmoid_dice_without_ignored_voxels():
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 6, 6, 6), (torch.rand(2, 3, 6, 6, 6) > 0.5).float()
    ours = MaskedRegionLoss()(logits, target)
    monai = DiceLoss(sigmoid=True)(logits, target)
    assert ours.item() == pytest.approx(monai.item(), rel=1e-5)


def _valid_voxels_only(tensor: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, C, N): the voxels where ``valid`` (B, X, Y, Z) holds, N per sample."""
    return torch.stack([t.flatten(1)[:, v.flatten()] for t, v in zip(tensor, valid)])


def _ignore_some(target: torch.Tensor, valid_per_sample: int, seed: int) -> torch.Tensor:
    """Boolean (B, X, Y, Z): exactly ``valid_per_sample`` random valid voxels in each sample."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.zeros(target.shape[0], target[0, 0].numel(), dtype=torch.bool)
    for b in range(target.shape[0]):
        valid[b, torch.randperm(valid.shape[1], generator=g)[:valid_per_sample]] = True
    return valid.view(target.shape[0], *target.shape[2:])


@pytest.mark.parametrize("squared, nr, dr", [(False, 0.0, 1e-6), (True, 1e-5, 1e-5)])
def test_softmax_loss_with_ignored_voxels_equals_monai_dicece_on_the_valid_voxels(squared, nr, dr):
    """Independent reference, by value: MONAI's DiceCELoss over only the voxels not labelled 255.

    A third of the voxels of each sample are ignored; the valid ones are gathered into a
    (B, C, N) "image" for MONAI, so both Dice volumes and the cross-entropy mean run over them only.
    """
    torch.manual_seed(3)
    logits, target = torch.randn(2, 4, 6, 6, 6), _labels(4, seed=3)
    valid = _ignore_some(target, 144, seed=3)
    target[:, 0][~valid] = IGNORE_LABEL
    ours = MaskedDiceCELoss(squared_pred=squared, smooth_nr=nr, smooth_dr=dr)(logits, target)
    reference = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=squared, smooth_nr=nr, smooth_dr=dr)(
        _valid_voxels_only(logits, valid), _valid_voxels_only(target, valid))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    everything = DiceCELoss(to_onehot_y=True, softmax=True)(logits, torch.where(target == IGNORE_LABEL, 0, target))
    assert abs(ours.item() - everything.item()) > 1e-3  # the ignored voxels did matter to the plain loss


def test_region_loss_with_ignored_voxels_equals_monai_dice_plus_bce_on_the_valid_voxels():
    torch.manual_seed(4)
    logits, target = torch.randn(2, 3, 6, 6, 6), (torch.rand(2, 3, 6, 6, 6) > 0.5).float()
    valid = _ignore_some(target, 150, seed=4)
    target = torch.where(valid[:, None], target, float(IGNORE_LABEL))
    ours = MaskedRegionLoss(bce_weight=0.5)(logits, target)
    kept_logits, kept_target = _valid_voxels_only(logits, valid), _valid_voxels_only(target, valid)
    reference = DiceLoss(sigmoid=True)(kept_logits, kept_target) + 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(
        kept_logits, kept_target)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_fully_ignored_patch_gives_a_finite_loss_and_no_gradient():
    target = torch.full((1, 1, 4, 4, 4), float(IGNORE_LABEL))
    loss, grad = _loss_and_grad(MaskedDiceCELoss(), torch.randn(1, 3, 4, 4, 4), target)
    assert math.isfinite(loss.item()) and torch.all(grad == 0)


def test_build_loss_follows_the_task_mode():
    assert isinstance(build_loss(get_task("btcv")), MaskedDiceCELoss)
    assert isinstance(build_loss(get_task("brats"), bce_weight=0.5), MaskedRegionLoss)
    with pytest.raises(ValueError, match="region tasks"):
        build_loss(get_task("ukbob"), bce_weight=0.5)


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    lr = lambda p, s="warmup_cosine": learning_rate(p, 1e-3, s, warmup_epochs=10, max_epochs=110)  # noqa: E731
    assert lr(0) == 0 and lr(5) == pytest.approx(5e-4) and lr(10) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(5e-4) and lr(110) == pytest.approx(0, abs=1e-12) and lr(200) == pytest.approx(0, abs=1e-12)
    assert lr(0, "cosine_anneal") == pytest.approx(1e-3) and lr(55, "cosine_anneal") == pytest.approx(5e-4)
    assert lr(70, "none") == 1e-3


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)

    def forward(self, x):
        return self.conv(x)


def _step(loss_fn):
    torch.manual_seed(0)
    model = _Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = {"image": torch.randn(2, 1, 4, 4, 4), "label": _labels(3)[:, :, :4, :4, :4]}
    before = [p.detach().clone() for p in model.parameters()]
    loss, stepped = train_step(model, batch, loss_fn, optimizer, scaler)
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return loss, stepped, changed, optimizer


def test_train_step_updates_weights_on_a_finite_loss():
    loss, stepped, changed, _ = _step(MaskedDiceCELoss())
    assert stepped and changed and math.isfinite(loss.item())


def test_train_step_skips_a_nan_loss_without_touching_weights_or_optimizer():
    loss, stepped, changed, optimizer = _step(lambda logits, label: logits.sum() * float("nan"))
    assert not stepped and not changed and math.isnan(loss.item())
    assert optimizer.state_dict()["state"] == {}


def test_classes_absent_from_a_patch_add_no_constant_to_the_dice_term():
    """73 outputs, 3 classes present, near-perfect logits: Dice term ~0, not 70/73 (the loss floor absent classes would add)."""
    target = torch.zeros(1, 1, 8, 8, 8)
    target[:, :, :4], target[:, :, 4:6] = 5, 2
    onehot = torch.nn.functional.one_hot(target[:, 0].long(), 73).movedim(-1, 1).float()
    loss = MaskedDiceCELoss(lambda_ce=0.0)(20.0 * onehot, target)
    assert loss.item() < 1e-3
    # Still MONAI's Dice on the classes that are present (here 0, 2 and 5):
    torch.manual_seed(3)
    logits = torch.randn(1, 73, 8, 8, 8)
    present = [0, 2, 5]
    ours = MaskedDiceCELoss(lambda_ce=0.0)(logits, target)
    probs = torch.softmax(logits, 1)[:, present]
    monai = DiceLoss()(probs, onehot[:, present])
    assert ours.item() == pytest.approx(monai.item(), rel=1e-5)
    # With smooth_nr > 0 absent classes keep MONAI DiceLoss semantics (a false-positive penalty):
    smoothed = MaskedDiceCELoss(smooth_nr=1e-5, smooth_dr=1e-5, lambda_ce=0.0)(logits, target)
    reference = DiceLoss(softmax=True, to_onehot_y=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    assert smoothed.item() == pytest.approx(reference.item(), rel=1e-5)


def test_validation_mean_dice_averages_only_classes_present_in_label_or_prediction():
    """Absent classes must not drag the mean (0.37 for two classes at 0.92); a stray
    predicted voxel of a class absent from the label does count, as a 0."""
    import dataclasses

    from swinbob.train.validation import validate

    task = dataclasses.replace(get_task("btcv"), label_map={0: "background", 1: "grey", 2: "white", 3: "csf"})
    shape = (32, 32, 64)
    label = torch.zeros(1, 1, *shape)
    label[..., :10, :, :], label[..., 10:20, :, :] = 1, 2
    prediction = label.clone()

    class Fixed(torch.nn.Module):
        def __init__(self, labels):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))
            self.logits = 10.0 * torch.nn.functional.one_hot(labels[:, 0].long(), 4).movedim(-1, 1).float()

        def forward(self, x):
            return self.logits.expand(x.shape[0], -1, -1, -1, -1) + 0 * self.dummy

    batch = {"image": torch.zeros(1, 1, *shape), "label": label}
    metrics = validate(Fixed(prediction), [batch], task, shape, overlap=0.0)
    assert metrics["grey"] == pytest.approx(1.0) and metrics["white"] == pytest.approx(1.0)
    assert np.isnan(metrics["csf"]) and metrics["mean"] == pytest.approx(1.0)
    prediction[..., 30, 0, 0] = 3  # one stray csf voxel: csf is now present in the prediction
    metrics = validate(Fixed(prediction), [batch], task, shape, overlap=0.0)
    assert metrics["csf"] == 0.0 and metrics["mean"] == pytest.approx(2 / 3, abs=1e-3)


def test_dice_over_present_pairs_counts_a_class_of_one_voxel():
    """One (sample, class) pair present, with a single voxel: the loss is that pair's 1 - Dice."""
    probs = torch.tensor([0.7, 0.2, 0.1, 0.4]).reshape(1, 1, 4, 1, 1).repeat(1, 2, 1, 1, 1)
    target = torch.zeros(1, 2, 4, 1, 1)
    target[0, 0, 0] = 1.0  # channel 0: one voxel; channel 1: absent
    loss = masked_soft_dice_loss(probs, target, torch.ones(1, 1, 4, 1, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(1 - 2 * 0.7 / (1.4 + 1 + 1e-6), rel=1e-6)


@pytest.mark.parametrize("squared, nr, dr", [(False, 0.0, 1e-6), (True, 0.5, 2.0), (False, 3.0, 0.25)])
def test_build_loss_passes_the_dice_settings_on(squared, nr, dr):
    torch.manual_seed(5)
    logits, labels = torch.randn(2, 4, 6, 6, 6), _labels(4, seed=5)
    softmax = build_loss(get_task("btcv"), squared, nr, dr)(logits, labels)
    reference = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=squared, smooth_nr=nr, smooth_dr=dr)(logits, labels)
    assert softmax.item() == pytest.approx(reference.item(), rel=1e-5)
    region_logits, regions = torch.randn(2, 3, 6, 6, 6), (torch.rand(2, 3, 6, 6, 6) > 0.7).float()
    region = build_loss(get_task("brats"), squared, nr, dr, bce_weight=0.3)(region_logits, regions)
    reference = DiceLoss(sigmoid=True, squared_pred=squared, smooth_nr=nr, smooth_dr=dr)(region_logits, regions) + \
        0.3 * torch.nn.functional.binary_cross_entropy_with_logits(region_logits, regions)
    assert region.item() == pytest.approx(reference.item(), rel=1e-5)


def test_build_loss_defaults_are_the_upstream_recipe():
    """Plain (not squared) Dice, smooth_nr 0, smooth_dr 1e-6 (upstream flags' defaults), no BCE."""
    torch.manual_seed(6)
    logits, labels = torch.randn(1, 3, 5, 5, 5), _labels(3, seed=6)[:1, :, :5, :5, :5]
    reference = DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=0.0, smooth_dr=1e-6)(logits, labels)
    assert build_loss(get_task("btcv"))(logits, labels).item() == pytest.approx(reference.item(), rel=1e-6)
    assert MaskedDiceCELoss()(logits, labels).item() == pytest.approx(reference.item(), rel=1e-6)
    regions = (torch.rand(1, 3, 5, 5, 5) > 0.5).float()
    reference = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-6)(logits, regions)
    assert build_loss(get_task("brats"))(logits, regions).item() == pytest.approx(reference.item(), rel=1e-6)
    assert MaskedRegionLoss()(logits, regions).item() == pytest.approx(reference.item(), rel=1e-6)
    probs, valid = torch.sigmoid(logits), torch.ones(1, 1, 5, 5, 5, dtype=torch.bool)
    assert masked_soft_dice_loss(probs, regions, valid).item() == pytest.approx(reference.item(), rel=1e-6)


def test_cross_entropy_part_with_the_top_class_absent_and_one_valid_voxel():
    """The CE term alone (Dice weight 0, so this holds whatever Dice does with absent classes):
    the mean over the one valid voxel, with the number of classes taken from the logits."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]).T.reshape(1, 3, 2, 1, 1)
    labels = torch.tensor([1.0, IGNORE_LABEL]).reshape(1, 1, 2, 1, 1)  # class 2 absent, one valid voxel
    ours = MaskedDiceCELoss(lambda_dice=0.0)(logits, labels)
    assert ours.item() == pytest.approx(-torch.log_softmax(logits[0, :, 0, 0, 0], 0)[1].item(), rel=1e-6)


def test_region_bce_is_a_mean_over_valid_voxels_even_for_one():
    logits = torch.tensor([0.3, -1.2]).reshape(1, 1, 2, 1, 1)
    targets = torch.tensor([1.0, IGNORE_LABEL]).reshape(1, 1, 2, 1, 1)
    with_bce = MaskedRegionLoss(bce_weight=1.0)(logits, targets) - MaskedRegionLoss()(logits, targets)
    assert with_bce.item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(0.3)).item()), rel=1e-6)
