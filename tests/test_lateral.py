"""Left/right label pairs under mirroring: the pairs found from label names, the training flip that
swaps their label values, and flip TTA that swaps their channels back (``swinbob.labels``,
``swinbob.data.transforms.RandFlipPairsd``, ``swinbob.infer.tta``)."""

import pytest
import torch
from monai import transforms as T
from torch import nn

from swinbob.data.mni_cohort import STRUCTURE_LABELS
from swinbob.data.transforms import DataConfig, RandFlipPairsd, augment_transforms, permute_label_values
from swinbob.infer.cli import mapped_model_labels
from swinbob.infer.evaluate import NO_ETTA, EvalSettings, predict_case_outputs
from swinbob.infer.tta import unmirror
from swinbob.infer.window import WindowSettings
from swinbob.labels import (
    IGNORE_LABEL, TOTALVIBE_LABELS, describe_side_pairs, ids_by_name, mirror_permutation, side_pairs,
)
from swinbob.tasks import Intensity, Task, get_task
from swinbob.train.state import run_config
from tiny import tiny_config

LATERAL = Task(name="lateral", channel_names=("ct",), mode="softmax", spacing=(1.0, 1.0, 1.0),
               intensity=Intensity("window", 0, 10, 0, 10),
               label_map={0: "background", 1: "liver", 2: "kidney_left", 3: "kidney_right", 4: "atrial_appendage_left"})
SHAPE = (16, 8, 8)
WINDOW = WindowSettings(SHAPE, 1, 0.0)
TV = ids_by_name(TOTALVIBE_LABELS)


# ----------------------------------------------------------------------------------------------
# Pairs from names
# ----------------------------------------------------------------------------------------------

def test_ukbob_pairs_swap_each_side_and_keep_unpaired_sides_and_midline_organs():
    permutation = mirror_permutation(TOTALVIBE_LABELS)
    assert len(permutation) == 73 and sorted(permutation) == list(range(73))
    assert all(permutation[permutation[i]] == i for i in range(73))  # an involution: mirroring twice is nothing
    swapped = {TOTALVIBE_LABELS[i] for i in range(73) if permutation[i] != i}
    assert len(swapped) == 2 * 19 and len(side_pairs(TOTALVIBE_LABELS)) == 19
    for name in ("kidney", "adrenal_gland", "lung_upper_lobe", "iliac_vena", "autochthon", "iliopsoas"):
        left, right = TV[f"{name}_left"], TV[f"{name}_right"]
        assert permutation[left] == right and permutation[right] == left
    for name in ("background", "liver", "spleen", "atrial_appendage_left", "lung_middle_lobe_right", "unused"):
        assert permutation[TV[name]] == TV[name]
    assert describe_side_pairs(TOTALVIBE_LABELS).startswith("kidney_left/kidney_right, adrenal_gland_left/")


def test_pairs_accept_left_x_forms_any_case_and_leave_a_lone_side_alone():
    labels = {0: "background", 1: "left_lung", 2: "Right_Lung", 3: "atrial_appendage_left", 4: "liver",
              5: "cleft_right", 6: "Left-Hippocampus", 7: "Right-Hippocampus"}
    assert mirror_permutation(labels) == (0, 2, 1, 3, 4, 5, 7, 6)
    assert mirror_permutation({0: "background", 1: "atrial_appendage_left", 2: "liver"}) is None
    assert describe_side_pairs({0: "background", 1: "liver"}) == "none"
    # two names that differ only by case: which one is the partner is unknown, so neither pairs
    assert mirror_permutation({0: "background", 1: "kidney_left", 2: "Kidney_Left", 3: "kidney_right"}) is None


def test_task_mirror_channels_come_from_the_label_names_of_softmax_tasks_only():
    btcv = get_task("btcv").mirror_channels
    assert btcv == (0, 1, 3, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13, 12)  # right/left kidney, right/left adrenal gland
    assert get_task("ukbob").mirror_channels == mirror_permutation(TOTALVIBE_LABELS)
    assert get_task("brats").mirror_channels is None
    assert mirror_permutation(STRUCTURE_LABELS) == (0, 2, 1, 4, 3)


# ----------------------------------------------------------------------------------------------
# Training: every mirror swaps the label values of each pair
# ----------------------------------------------------------------------------------------------

def _sample() -> dict[str, torch.Tensor]:
    """kidney_left (2) at x < 8 and kidney_right (3) at x >= 8, a liver (1), the unpaired appendage (4)
    and ignored voxels (255), all on the left; the image holds the label values (image and label move together)."""
    label = torch.zeros(1, *SHAPE)
    label[0, 2:5, 1:4, 5:7], label[0, 11:14, 1:4, 5:7] = 2, 3
    label[0, 5:7, 5:7, 1:3], label[0, 1:3, 6:8, 0:2], label[0, 0, 0, 0] = 1, 4, IGNORE_LABEL
    return {"image": label.clone(), "label": label}


def test_mirroring_x_puts_the_right_label_on_the_structure_now_on_the_right():
    flip = RandFlipPairsd(keys=["image", "label"], prob=1.0, spatial_axis=0, permutation=LATERAL.mirror_channels)
    sample = _sample()
    out = flip(sample)
    label, moved = out["label"][0], out["image"][0]
    assert torch.equal(moved, sample["image"][0].flip(0))  # the anatomy is mirrored ...
    assert label[11:14, 1:4, 5:7].eq(3).all() and label[2:5, 1:4, 5:7].eq(2).all()  # ... and renamed by side
    assert torch.equal(label == 1, moved == 1) and torch.equal(label == 4, moved == 4)
    assert torch.equal(label == IGNORE_LABEL, moved == IGNORE_LABEL)
    assert torch.equal(flip.inverse(out)["label"], sample["label"])  # MONAI's inverse undoes flip and swap


def test_the_pair_flip_draws_as_randflipd_and_without_pairs_is_randflipd():
    keys = ["image", "label"]
    plain = T.RandFlipd(keys=keys, prob=0.5, spatial_axis=0).set_random_state(7)
    no_pairs = RandFlipPairsd(keys=keys, prob=0.5, spatial_axis=0).set_random_state(7)
    pairs = RandFlipPairsd(keys=keys, prob=0.5, spatial_axis=0, permutation=LATERAL.mirror_channels).set_random_state(7)
    flips = 0
    for _ in range(12):
        expected = plain(_sample())
        flipped = not torch.equal(expected["image"], _sample()["image"])
        flips += flipped
        assert torch.equal(no_pairs(_sample())["label"], expected["label"])
        renamed = permute_label_values(expected["label"], LATERAL.mirror_channels) if flipped else expected["label"]
        assert torch.equal(pairs(_sample())["label"], renamed)
    assert 0 < flips < 12


def test_every_mirror_of_the_training_chain_swaps_pairs():
    config = DataConfig.from_task(LATERAL, roi=SHAPE)
    flips = [t for t in augment_transforms(LATERAL, config) if isinstance(t, T.RandFlipd)]
    assert [t.flipper.spatial_axis for t in flips] == [0, 1, 2]
    assert all(isinstance(t, RandFlipPairsd) and t.permutation == LATERAL.mirror_channels for t in flips)


def test_mirrors_along_x_and_y_label_a_patch_as_the_180_degree_rotation_that_gives_it():
    """The same patch from two augmentations must carry the same labels: two mirrors are a rotation."""
    def mirror(axis: int) -> RandFlipPairsd:
        return RandFlipPairsd(keys=["image", "label"], prob=1.0, spatial_axis=axis, permutation=LATERAL.mirror_channels)
    square = {k: v[:, :8] for k, v in _sample().items()}  # x-y square, so that the rotation keeps the shape
    mirrored = mirror(1)(mirror(0)(square))
    rotated = T.Rotate90d(keys=["image", "label"], k=2, spatial_axes=(0, 1))(square)
    assert torch.equal(mirrored["image"], rotated["image"])
    assert torch.equal(mirrored["label"], rotated["label"])
    once = mirror(2)(square)
    assert once["label"].eq(3).any() and not torch.equal(once["label"] == 3, once["image"] == 3)


# ----------------------------------------------------------------------------------------------
# Flip TTA: mirror images along an odd number of axes have their pair channels swapped back
# ----------------------------------------------------------------------------------------------

class BodyFrameModel(nn.Module):
    """Names sides as a body does, from its own axes: the side of the intensity centroid along y and
    along z stands for the anterior and superior directions, and a kidney (intensity 1) is
    ``kidney_left`` on the side of x that their product says; liver (2) and the unpaired appendage (3)
    by intensity alone. A mirror along any one axis reverses exactly one of the three, so the
    prediction on a mirror image is the mirrored prediction with the pair swapped, as for a model
    trained with mirrored patches renamed by side."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intensity = x[:, 0]

        def centred(axis: int) -> torch.Tensor:
            n = intensity.shape[axis]
            return (torch.arange(n, dtype=x.dtype) - (n - 1) / 2).view([-1 if a == axis else 1 for a in range(4)])

        frame = torch.sign((intensity * centred(2)).sum()) * torch.sign((intensity * centred(3)).sum())
        left = centred(1) * frame < 0
        logits = torch.zeros(x.shape[0], 5, *x.shape[2:])
        logits[:, 0] = 5.0 * (intensity == 0)
        logits[:, 1] = 5.0 * (intensity == 2)
        logits[:, 2] = 5.0 * ((intensity == 1) & left)
        logits[:, 3] = 5.0 * ((intensity == 1) & ~left)
        logits[:, 4] = 5.0 * (intensity == 3)
        return logits


def _image() -> torch.Tensor:
    """Kidneys on both sides, a liver and an appendage across the midline, all off-centre in y and z."""
    image = torch.zeros(1, *SHAPE)
    image[0, 2:5, 1:4, 5:7] = 1
    image[0, 11:14, 1:4, 5:7] = 1
    image[0, 5:11, 5:7, 1:3] = 2
    image[0, 6:9, 1:3, 1:3] = 3
    return image


def _settings(tmp_path, **kw) -> EvalSettings:
    return EvalSettings(task=LATERAL, data=DataConfig.from_task(LATERAL, roi=SHAPE), window=WINDOW,
                        output_dir=tmp_path, methods=(NO_ETTA,), **kw)


def test_flip_tta_keeps_each_side_of_a_body_frame_model_on_a_lateral_label_set(tmp_path):
    model, image = BodyFrameModel().eval(), _image()
    plain = predict_case_outputs(model, image, _settings(tmp_path))[0][NO_ETTA]
    assert plain[2:5, 1:4, 5:7].eq(2).all() and plain[11:14, 1:4, 5:7].eq(3).all()
    for axes in ((0,), (1,), (2,), (0, 1), (0, 1, 2)):
        flipped = predict_case_outputs(model, image, _settings(tmp_path, tta="flip", tta_axes=axes))[0][NO_ETTA]
        assert torch.equal(flipped, plain), axes


def test_unmirror_swaps_pair_channels_only_for_an_odd_number_of_mirrors():
    logits = torch.arange(5.0).view(1, 5, 1, 1, 1).expand(1, 5, 2, 2, 2).contiguous()
    permutation = LATERAL.mirror_channels
    for subset in ((0,), (1,), (2,), (0, 1, 2)):
        assert unmirror(logits, subset, permutation)[0, :, 0, 0, 0].tolist() == [0, 1, 3, 2, 4], subset
    for subset in ((), (0, 1), (0, 2), (1, 2)):
        assert torch.equal(unmirror(logits, subset, permutation), logits), subset
    assert torch.equal(unmirror(logits, (0,), None), logits)
    with pytest.raises(ValueError, match="5 mirror channels for a model with 3 outputs"):
        unmirror(logits[:, :3], (0,), permutation)


def test_a_region_task_has_no_mirror_channels_whatever_its_names(tmp_path):
    regions = Task(name="regions", channel_names=("t1",), mode="regions", spacing=(1.0, 1.0, 1.0),
                   intensity=Intensity("window", 0, 10, 0, 10), regions={"left": (1,), "right": (2,)},
                   label_map={0: "background", 1: "kidney_left", 2: "kidney_right"})
    settings = EvalSettings(task=regions, data=DataConfig.from_task(regions, roi=SHAPE), window=WINDOW,
                            output_dir=tmp_path)
    assert settings.mirror_channels is None


def test_a_zero_shot_model_swaps_the_pairs_of_its_own_label_names(tmp_path):
    ukbob = get_task("ukbob")
    stored = run_config(ukbob, tiny_config(4, 73), DataConfig.from_task(ukbob))  # what a checkpoint records
    assert mapped_model_labels(stored, {5: 6}, 73) == TOTALVIBE_LABELS
    assert mapped_model_labels(stored, None, 73) is None and mapped_model_labels(None, {5: 6}, 73) is None
    btcv = get_task("btcv")
    settings = EvalSettings(task=btcv, data=DataConfig.from_task(btcv), window=WINDOW, output_dir=tmp_path,
                            label_map={5: 6})
    assert settings.mirror_channels is None  # the model's outputs are not BTCV's, and their names are unknown
    settings.model_labels = TOTALVIBE_LABELS
    assert settings.mirror_channels == mirror_permutation(TOTALVIBE_LABELS)
