"""The evaluation's optional outputs and its use of flip TTA and of an ETTA outcome, checked by
what a user reads: probability maps, ``statistics.json``, GIFs, kept or replaced files, and the
labels pasted from an adaptation (they kill mutants of ``predict_case``, ``predict_case_outputs``
and ``evaluate_case``; tests/mutation_equivalents.md lists the equivalent survivors).

Models are oracles or fixed-logit modules, so every expected value is exact."""

import dataclasses
import json
import logging

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage
from test_eval import NON_RAS, SHAPE, IntensityOracle, hu_of, settings_for, write_btcv_case
from torch import nn

from swinbob.infer import evaluate
from swinbob.infer.etta import EttaOutcome
from swinbob.infer.evaluate import ETTA, NO_ETTA, Case, EvalSettings, predict_case_outputs, run_evaluation, scored_classes
from swinbob.infer.window import predict_logits
from swinbob.data.transforms import DataConfig
from swinbob.tasks import Intensity, Task, get_task
from swinbob.viz import LEGEND_WIDTH, GifSettings, class_colour

VOXEL_ML = 1.5 * 1.5 * 2.0 / 1000.0  # NON_RAS spacing
GIF = GifSettings(frames=3, downsample=2, duration=0.1)


class LesionOracle(nn.Module):
    """Both regions of a two-region task wherever the (identity-windowed) intensity is above 2."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] > 2.0, 10.0, -10.0).repeat(1, 2, 1, 1, 1)


def _region_task(kind: str) -> Task:
    if kind == "brats2021":  # ET is label 4
        return get_task("brats", et_label=4)
    # a dataset.json region task: region i writes region_labels[i], later regions over earlier ones
    return Task(name="custom", channel_names=("t1",), label_map={0: "background", 1: "label_1", 2: "label_2"},
                mode="regions", regions={"whole": (1, 2), "core": (2,)}, region_labels=(1, 2),
                spacing=(1.5, 1.5, 2.0), intensity=Intensity("window", 0, 10, 0, 10))


def _settings(task: Task, out, methods=(NO_ETTA,), **kw) -> EvalSettings:
    settings = settings_for(task, out, **kw)
    settings.methods = methods
    return settings


def _array(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture
def perfect_run(tmp_path):
    """A perfect model on a labelled case and on the same image without a label, every optional output on
    (about a second; per test, so that mutmut links each test to the functions it runs)."""
    tmp = tmp_path
    labelled = write_btcv_case(tmp / "data", "labelled", NON_RAS, 0)
    unlabelled = Case("unlabelled", labelled.image, None)
    settings = settings_for(get_task("btcv"), tmp / "out", save_probabilities=True, statistics=True, gif=GIF)
    summary = run_evaluation(IntensityOracle(), [labelled, unlabelled], settings)
    assert summary["cases"]["evaluated"] == 2 and summary["failures"] == []
    return labelled, settings.output_dir


def test_probability_maps_are_on_the_input_grid_and_give_the_written_labels(perfect_run):
    case, out = perfect_run
    truth = _array(case.label)
    for name in ("labelled", "unlabelled"):
        written = nib.load(out / "probabilities" / f"{name}.nii.gz")
        probs = np.asarray(written.dataobj)
        assert written.shape == (*SHAPE, 14) and written.get_data_dtype() == np.float32
        assert written.header.get_xyzt_units()[0] == "mm"  # spacing in mm, as the labels
        assert np.array_equal(written.affine, NON_RAS)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # softmax channels, everywhere
        assert np.array_equal(probs.argmax(-1), truth)
        assert np.array_equal(probs.argmax(-1), _array(out / "predictions" / f"{name}.nii.gz"))
        # the air border is outside the foreground crop: certain background there, not a model output
        assert probs[0, 0, 0, 0] == 1.0 and not probs[0, 0, 0, 1:].any()


def test_statistics_describe_the_primary_prediction_in_ml_hu_and_voxels(perfect_run):
    case, out = perfect_run
    truth = _array(case.label)
    stats = json.loads((out / "statistics.json").read_text())
    classes = scored_classes(get_task("btcv"))
    assert set(stats) == {"labelled", "unlabelled"} and set(stats["labelled"]) == set(classes)
    assert stats["unlabelled"] == stats["labelled"]  # from the prediction, not the label file
    present = 0
    for name, (label,) in classes.items():
        mask, entry = truth == label, stats["labelled"][name]
        assert entry["voxels"] == int(mask.sum())
        assert entry["volume_ml"] == pytest.approx(mask.sum() * VOXEL_ML)
        if mask.any():
            present += 1
            assert entry["mean_intensity"] == pytest.approx(hu_of(label))
            assert entry["components"] == ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
            assert entry["bbox"] == [[int(i.min()), int(i.max())] for i in np.nonzero(mask)]
        else:
            assert entry["mean_intensity"] is None and entry["bbox"] is None and entry["components"] == 0
    assert present == 4


def test_gifs_show_the_prediction_and_the_ground_truth_when_there_is_one(perfect_run):
    case, out = perfect_run
    present = [int(c) for c in np.unique(_array(case.label)) if c > 0]
    labelled = iio.imread(out / "gifs" / "labelled.gif", index=None)[..., :3].astype(int)
    unlabelled = iio.imread(out / "gifs" / "unlabelled.gif", index=None)[..., :3].astype(int)
    assert labelled.shape[0] == unlabelled.shape[0] == GIF.frames
    width = labelled.shape[2] - unlabelled.shape[2]  # a ground-truth panel only with a label
    assert width > 0 and labelled.shape[2] == 3 * width + LEGEND_WIDTH and unlabelled.shape[2] == 2 * width + LEGEND_WIDTH
    below = slice(16, None)  # under the panel titles
    image, prediction, truth = (labelled[:, below, k * width:(k + 1) * width] for k in range(3))
    assert np.abs(prediction - truth).max() <= 8  # a perfect model: the prediction panel is the ground truth's
    assert np.abs(unlabelled[:, below, :2 * width] - labelled[:, below, :2 * width]).max() <= 8
    overlay = np.abs(prediction - image).max(-1) > 24
    assert overlay.sum() > 100 and not (np.abs(truth - image).max(-1) > 24)[~overlay].any()
    # each overlaid pixel is half the grey image and half the colour of a class of the label
    colours = np.asarray([class_colour(c) for c in present])
    blended = 2 * prediction[overlay] - image[overlay]
    nearest = np.abs(blended[:, None, :] - colours[None]).max(-1).min(-1)
    assert np.mean(nearest <= 40) > 0.95
    # and where the subject has it: an organ right (+x) of the body's centre is left of the panel's centre,
    # an anterior (+y) one above it (world coordinates from the affine, not from the GIF's own reorientation)
    labels = _array(case.label)
    world = nib.affines.apply_affine(NON_RAS, np.argwhere(labels >= 0)).reshape(*labels.shape, 3)
    centre = world.reshape(-1, 3).mean(0)
    nearest_class = np.abs(blended[:, None, :] - colours[None]).max(-1).argmin(-1)
    frame_rows, frame_cols = np.nonzero(overlay)[1:]
    checked = 0
    for k, label in enumerate(present):
        shown = nearest_class == k
        offset = world[labels == label].mean(0) - centre
        if shown.sum() < 20 or min(abs(offset[0]), abs(offset[1])) < 3:
            continue
        checked += 1
        assert np.sign(width / 2 - frame_cols[shown].mean()) == np.sign(offset[0]), label
        assert np.sign((image.shape[1] + 16) / 2 - 16 - frame_rows[shown].mean()) == np.sign(offset[1]), label
    assert checked >= 1


def test_statistics_follow_the_label_map_and_probabilities_are_written_only_when_asked(tmp_path):
    case = write_btcv_case(tmp_path / "data", "mapped", NON_RAS, 0)
    oracle = IntensityOracle(73, remap={1: 1, 6: 5, 8: 18, 11: 18})  # a UKBOB-like label space
    settings = settings_for(get_task("btcv"), tmp_path / "out", label_map={5: 6, 1: 1}, statistics=True,
                            save_predictions=False)
    run_evaluation(oracle, [case], settings)
    stats = json.loads((tmp_path / "out" / "statistics.json").read_text())["mapped"]
    truth = _array(case.label)
    assert {name: entry["voxels"] for name, entry in stats.items()} == {
        "spleen": int((truth == 1).sum()), "liver": int((truth == 6).sum())}
    assert not (tmp_path / "out" / "probabilities").exists()


def test_region_probability_maps_are_zero_outside_the_foreground_crop(tmp_path):
    """Region tasks (sigmoid channels) get 0 outside the crop, where softmax tasks get background 1."""
    task = _region_task("custom")
    image = np.zeros(SHAPE, np.float32)
    image[3:-3, 3:-3, 3:-3] = 1.0  # body; the zero border is cropped away
    image[12:24, 15:30, 8:20] = 3.0  # lesion: both regions
    nib.save(nib.Nifti1Image(image, NON_RAS), tmp_path / "scan.nii.gz")
    settings = _settings(task, tmp_path / "out", save_probabilities=True)
    settings.data = DataConfig(spacing=(1.5, 1.5, 2.0), intensity=Intensity("window", 0, 10, 0, 10), roi=(32, 32, 32))
    summary = run_evaluation(LesionOracle(), [Case("scan", (str(tmp_path / "scan.nii.gz"),), None)], settings)
    assert summary["failures"] == []
    probs = _array(tmp_path / "out" / "probabilities" / "scan.nii.gz")
    lesion = image == 3.0
    assert probs.shape == (*SHAPE, 2) and not probs[image == 0].any()
    assert (probs[lesion] > 0.99).all() and (probs[(image == 1.0)] < 0.01).all()
    assert np.array_equal(_array(tmp_path / "out" / "predictions" / "scan.nii.gz"), 2 * lesion)  # core over whole


def test_existing_outputs_are_kept_unless_overwrite_is_set(tmp_path, caplog):
    case = write_btcv_case(tmp_path / "data", "case", NON_RAS, 0)
    settings = settings_for(get_task("btcv"), tmp_path / "out", save_probabilities=True, gif=GIF)
    out = settings.output_dir
    files = [out / "predictions" / "case.nii.gz", out / "probabilities" / "case.nii.gz", out / "gifs" / "case.gif"]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an earlier run")
    with caplog.at_level(logging.WARNING, logger="swinbob.infer.evaluate"):
        summary = run_evaluation(IntensityOracle(), [case], settings)
    assert summary["cases"]["evaluated"] == 1  # still scored
    assert all(path.read_bytes() == b"an earlier run" for path in files)
    assert all(f"{path} exists: kept (pass --overwrite to replace it)" in caplog.text for path in files)
    settings.overwrite = True
    run_evaluation(IntensityOracle(), [case], settings)
    assert np.array_equal(_array(files[0]), _array(case.label))
    assert nib.load(files[1]).shape == (*SHAPE, 14)
    assert iio.imread(files[2], index=None).shape[0] == GIF.frames


# ----------------------------------------------------------------------------------------------
# predict_case_outputs: flip TTA and the use of an ETTA outcome
# ----------------------------------------------------------------------------------------------

class MirrorTestModel(nn.Module):
    """Softmax logits that depend on position only: background 3; class 1 at 6 in the lower half of
    z and 1 in the upper half; class 4 (gallbladder: no side, so no mirror renames it) at 10 in the
    strip x < 8; everything else -20."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 14, *x.shape[2:]), -20.0)
        logits[:, 0] = 3.0
        half = x.shape[-1] // 2
        logits[:, 1, ..., :half], logits[:, 1, ..., half:] = 6.0, 1.0
        logits[:, 4, :8] = 10.0
        return logits


def _flip_settings(tmp_path, **kw):
    return _settings(get_task("btcv"), tmp_path, tta="flip", tta_axes=(2,), **kw)


def test_flip_tta_averages_softmax_probabilities_over_the_configured_axes_only(tmp_path):
    model, image = MirrorTestModel().eval(), torch.zeros(1, 32, 32, 32)
    plain = predict_case_outputs(model, image, settings_for(get_task("btcv"), tmp_path))[0][NO_ETTA]
    assert plain[8:, :, :16].eq(1).all() and plain[8:, :, 16:].eq(0).all() and plain[:8].eq(4).all()
    flipped = predict_case_outputs(model, image, _flip_settings(tmp_path))[0][NO_ETTA]
    # mirrored along z only: class 1 has mean softmax probability (0.953 + 0.119) / 2 = 0.536 > 0.464
    # for background (a mean of sigmoids would pick background), and the x < 8 strip stays where it is
    assert flipped[:8].eq(4).all() and flipped[8:].eq(1).all()


def test_etta_adapts_with_the_same_tta_as_the_source_prediction(tmp_path, monkeypatch):
    """An adaptation that leaves the model unchanged must reproduce the source labels, flip TTA included."""

    def unchanged_model(model, image, logits, mode, config, window, predict=predict_logits):
        return EttaOutcome(box=(slice(None),) * 3, probs=torch.softmax(predict(model, image, window), 1)[0])

    monkeypatch.setattr(evaluate, "etta_predict", unchanged_model)
    model, image = MirrorTestModel().eval(), torch.zeros(1, 32, 32, 32)
    labels, record, _ = predict_case_outputs(model, image, _flip_settings(tmp_path, methods=(NO_ETTA, ETTA)))
    assert labels[NO_ETTA][8:].eq(1).all() and torch.equal(labels[ETTA], labels[NO_ETTA])
    assert record == {"applied": True, "fallback": None}


def test_out_of_memory_during_etta_is_logged_and_recorded(tmp_path, monkeypatch, caplog):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(evaluate, "etta_predict", no_memory)
    model, image = MirrorTestModel().eval(), torch.zeros(1, 32, 32, 32)
    with caplog.at_level(logging.WARNING, logger="swinbob.infer.evaluate"):
        labels, record, _ = predict_case_outputs(model, image, _settings(get_task("btcv"), tmp_path, methods=(ETTA,)))
    assert caplog.messages == ["out of memory during ETTA: keeping the source prediction (try fewer --etta_windows)"]
    assert record == {"applied": False, "fallback": "out of memory during adaptation"}
    assert set(labels) == {ETTA} and labels[ETTA][8:, :, :16].eq(1).all()  # the source prediction


class FixedLogits(nn.Module):
    """The same logits for any input (one window covers the 32^3 test volume); it uses its
    parameter, so an input on another device than the model fails as a real network would."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[None].to(x.device) + x[:, :1] * self.anchor  # a fresh tensor: MONAI weights it in place


BOX = (slice(8, 24), slice(8, 24), slice(8, 24))


@pytest.mark.parametrize("kind, device", [("brats2021", "cpu"), ("custom", "cpu"),
                                          pytest.param("brats2021", "cuda", marks=pytest.mark.gpu)])
def test_an_applied_adaptation_is_pasted_into_its_box_by_the_task_s_label_rule(tmp_path, monkeypatch, kind, device):
    """On a GPU, ETTA's probabilities lie on the GPU while large volumes' source logits are summed
    on the CPU (``accumulate="cpu"`` here): they are pasted across devices."""
    task = _region_task(kind)
    regions = len(task.regions)
    logits = torch.full((regions, 32, 32, 32), -5.0)
    logits[:, :4] = 5.0  # every region in the slab x < 4, outside the box
    adapted = torch.full((regions, 16, 16, 16), 0.9)  # probabilities in the box
    adapted[0] = 0.3  # TC / "whole": below 0.5 (absent), though above 0
    adapted[-1] = 0.2
    adapted[-1, :8] = 0.7  # ET / "core" in the box's lower half of x only
    outcome = EttaOutcome(box=BOX, probs=adapted.to(device), info={"steps": 2})
    monkeypatch.setattr(evaluate, "etta_predict", lambda *args: outcome)
    settings = _settings(task, tmp_path, methods=(ETTA,), save_probabilities=True, device=torch.device(device))
    settings.window = dataclasses.replace(settings.window, accumulate="cpu")
    model = FixedLogits(logits).to(device)
    labels, record, probs = predict_case_outputs(model, MetaTensor(torch.zeros(task.in_channels, 32, 32, 32)), settings)
    assert set(labels) == {ETTA} and record == {"applied": True, "fallback": None, "steps": 2}
    # BraTS: ET -> 4 over TC -> 1 over WT -> 2; custom: "core" -> 2 over "whole" -> 1
    inner, outer = (4, 2) if kind == "brats2021" else (2, 0)
    expected = torch.zeros(32, 32, 32, dtype=torch.int16)
    expected[:4] = inner  # the source prediction outside the box
    expected[8:16, 8:24, 8:24], expected[16:24, 8:24, 8:24] = inner, outer
    assert torch.equal(labels[ETTA].cpu().to(torch.int16), expected)
    probs = probs.cpu()
    assert torch.equal(probs[(slice(None), *BOX)], adapted)
    outside = torch.ones(32, 32, 32, dtype=torch.bool)
    outside[BOX] = False
    assert torch.allclose(probs[:, outside], torch.sigmoid(logits)[:, outside])


# Small pieces of the outputs, each against values worked out by hand (mutation survivors of viz and outputs)

def test_gif_settings_refuse_zero_and_accept_one():
    assert GifSettings(frames=1, downsample=1, duration=0.01).frames == 1  # one frame is a valid GIF
    for bad in ({"frames": 0}, {"downsample": 0}, {"duration": 0.0}, {"duration": -1.0}):
        with pytest.raises(ValueError, match="GIF settings must be positive"):
            GifSettings(**bad)


def test_slice_indices_span_first_to_last_slice_or_take_the_middle_one():
    from swinbob.viz import slice_indices
    assert slice_indices(10, 4).tolist() == [0, 3, 6, 9]  # 0, 3, 6, 9 = linspace(0, 9, 4) by hand
    assert slice_indices(10, 2).tolist() == [0, 9]
    assert slice_indices(10, 1).tolist() == [5] and slice_indices(7, 1).tolist() == [3]  # the middle slice
    assert slice_indices(3, 60).tolist() == [0, 1, 2]  # never more frames than slices


def test_class_colours_follow_the_palette_then_saturated_golden_ratio_hues():
    import colorsys

    from swinbob.viz import _PALETTE
    assert [class_colour(k) for k in range(1, len(_PALETTE) + 1)] == list(_PALETTE)
    extra = [class_colour(k) for k in range(len(_PALETTE) + 1, len(_PALETTE) + 41)]
    assert len(set(extra)) == len(extra)  # every class its own colour
    for colour in extra:  # HSV with S = 0.75, V = 0.95: max channel 0.95 · 255, min channel 0.25 of that
        assert max(colour) == 242 and min(colour) in (60, 59, 61) and all(0 <= c <= 255 for c in colour)
    hues = [colorsys.rgb_to_hsv(*(c / 255 for c in colour))[0] for colour in extra]
    for a, b in zip(hues, hues[1:]):  # successive classes step the hue by the golden ratio's 0.618
        assert min(abs((b - a) % 1.0 - 0.618034), abs((b - a) % 1.0 - 0.618034 + 1)) < 0.01


@pytest.mark.parametrize("are_logits, threshold", [(True, 0.0), (False, 0.5)])
def test_region_foreground_is_any_channel_above_the_decision_threshold(are_logits, threshold):
    from swinbob.infer.outputs import foreground
    scores = torch.full((2, 3, 1, 1), threshold - 1.0)
    scores[0, 0] = threshold + 0.01  # first channel only
    scores[1, 1] = threshold + 0.01  # second channel only
    scores[:, 2] = threshold  # exactly at the threshold: not foreground
    assert foreground(scores, "regions", are_logits).reshape(-1).tolist() == [True, True, False]
    assert bool(foreground(torch.full((1, 1, 1, 1), 0.3), "regions")) is True  # scores are logits by default
    softmax = torch.tensor([[0.1, 0.9], [0.8, 0.05], [0.1, 0.05]]).reshape(3, 2, 1, 1)
    assert foreground(softmax, "softmax").reshape(-1).tolist() == [True, False]


def test_grey_window_maps_the_half_and_ninety_nine_and_a_half_percentiles_to_0_and_255():
    from swinbob.viz import _grey
    image = np.arange(1000, dtype=np.float64).reshape(10, 100)  # percentiles 4.995 and 994.005 by hand
    grey = _grey(image)
    assert grey.dtype == np.uint8
    expected = np.floor(np.clip((image - 4.995) / 989.01, 0, 1) * 255)
    assert np.abs(grey.astype(int) - expected).max() <= 1 and grey.min() == 0 and grey.max() == 255
    assert grey[0, 0] == 0 and grey[-1, -1] == 255 and grey[0, 50] == int((50 - 4.995) / 989.01 * 255)
    narrow = _grey(np.linspace(0.0, 0.5, 1000).reshape(10, 100))  # a range under 1 is stretched all the same
    assert narrow.min() == 0 and narrow.max() == 255


def test_overlay_blends_each_class_colour_and_leaves_background_grey():
    from swinbob.viz import ALPHA, _overlay
    grey = np.full((2, 2), 100, np.uint8)
    labels = np.array([[0, 1], [2, 0]])
    rgb = _overlay(grey, labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [100, 100, 100] and rgb[1, 1].tolist() == [100, 100, 100]
    for (i, j), label in (((0, 1), 1), ((1, 0), 2)):
        expected = [int((1 - ALPHA) * 100 + ALPHA * c) for c in class_colour(label)]
        assert np.abs(rgb[i, j].astype(int) - expected).max() <= 1
    assert _overlay(grey, None).tolist() == np.repeat(grey[..., None], 3, axis=-1).tolist()


@pytest.mark.parametrize("classes, height, swatches, more", [
    (3, 4 + 3 * 14, 3, False),  # exactly as many rows as classes: all shown
    (4, 4 + 3 * 14, 2, True),  # one class too many: rows - 1 swatches and a "+2 more" line
    (2, 4 + 14 - 1, 0, True),  # room for less than one row: that row says "+2 more"
    (1, 10, 1, False),
    (3, 4 + 2 * 14 + 6, 1, True),  # two rows (not three): one swatch and "+2 more"
])
def test_legend_shows_one_swatch_per_class_that_fits_then_a_more_line(classes, height, swatches, more):
    from swinbob.viz import _ROW, _legend
    assert _ROW == 14
    panel = _legend(height, list(range(1, classes + 1)), {1: "liver", 2: "spleen"})
    assert panel.shape == (height, LEGEND_WIDTH, 3) and panel[0, -1].tolist() == [0, 0, 0]  # black background
    seen = [row for row in range(classes) if 2 + row * _ROW + 6 < height
            and panel[2 + row * _ROW + 6, 9].tolist() == list(class_colour(row + 1))]
    assert seen == list(range(swatches))
    if swatches and height >= 16:  # the first swatch spans rows 3 to 13 and columns 4 to 14, by the layout's numbers
        column = panel[:16, 9].tolist()
        assert column[2] == column[14] == [0, 0, 0] and column[3] == column[13] == list(class_colour(1))
        assert panel[8, 3].tolist() == [0, 0, 0] and panel[8, 4].tolist() == panel[8, 14].tolist() == list(class_colour(1))
    text_row = 2 + swatches * _ROW
    has_more = text_row < height and (panel[text_row:text_row + 10, 18:80] > 150).any()
    assert bool(has_more) == more


def test_legend_text_reads_id_and_name_cut_to_24_characters_and_a_grey_more_line():
    """Each row's text, compared with Pillow rendering the expected string alone (the field's library
    as the oracle for glyphs): white "{id} {name}" cut to 24 characters, a bare id for an unnamed
    class, then "+N more" in grey 200 on the row after the last swatch."""
    from PIL import Image, ImageDraw, ImageFont

    from swinbob.viz import _ROW, _legend

    def rendered(text: str, fill: tuple[int, int, int]) -> np.ndarray:
        canvas = Image.new("RGB", (LEGEND_WIDTH - 18, _ROW), (0, 0, 0))
        ImageDraw.Draw(canvas).text((0, 0), text, fill=fill, font=ImageFont.load_default())
        return np.asarray(canvas)

    names = {1: "a_structure_name_of_thirty_chars", 2: "spleen"}  # class 3 has no name
    panel = _legend(4 + 3 * _ROW, [1, 2, 3, 4, 5], names)  # three rows: two classes, then "+3 more"
    rows = [panel[2 + r * _ROW: 2 + (r + 1) * _ROW, 18:] for r in range(3)]
    assert np.array_equal(rows[0], rendered("1 a_structure_name_of_thirty_chars"[:24], (255, 255, 255)))
    assert np.array_equal(rows[1], rendered("2 spleen", (255, 255, 255)))
    assert np.array_equal(rows[2], rendered("+3 more", (200, 200, 200)))
    unnamed = _legend(4 + 2 * _ROW, [3], names)
    assert np.array_equal(unnamed[2: 2 + _ROW, 18:], rendered("3 ", (255, 255, 255)))
    assert not unnamed[2 + _ROW:, 18:].any()  # everything fits: no "+0 more"
    assert panel[8, 15].tolist() == [0, 0, 0] and panel[8, 14].tolist() == list(class_colour(1))  # swatch ends at 14


@pytest.mark.parametrize("shape, downsample, spacing, expected", [
    ((32, 40, 5), 1, (1.0, 1.0, 1.0), (160, 128)),  # square pixels, 4x to reach 128 rows: 40*4 by 32*4
    ((32, 40, 5), 2, (1.0, 1.0, 1.0), (140, 112)),  # 20 rows shown, 7x
    ((32, 40, 5), 1, (1.0, 1.5, 1.0), (160, 64)),  # rows 1.5 mm, columns 1 mm: 2 row repeats per column, then 2x
    ((32, 40, 5), 1, (1.5, 1.0, 1.0), (160, 256)),  # columns 1.5 mm: 2 column repeats per row, then 4x
    ((32, 200, 5), 1, (1.0, 5.0, 1.0), (800, 32)),  # 5:1 is capped at 4:1; already over 128 rows: no more
    ((32, 200, 5), 1, (5.0, 1.0, 1.0), (200, 128)),  # 1:5 capped at 1:4
    ((32, 200, 5), 1, (1.0, 1.0, 1.0), (200, 32)),  # tall enough: shown at one pixel per voxel
])
def test_panels_repeat_pixels_for_the_voxel_aspect_up_to_four_then_reach_128_rows(shape, downsample, spacing, expected):
    from swinbob.viz import MIN_PANEL, panel_shape
    assert MIN_PANEL == 128
    assert panel_shape(shape, downsample, spacing) == expected  # (rows, columns), worked out by hand


def _captioned(width: int, height: int, texts: list[tuple[int, str]]) -> np.ndarray:
    """A black frame with each text drawn by Pillow in yellow 3 pixels right of ``x``, 2 from the top."""
    from PIL import Image, ImageDraw, ImageFont
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for x, text in texts:
        draw.text((x + 3, 2), text, fill=(255, 255, 0), font=ImageFont.load_default())
    return np.asarray(canvas)


@pytest.mark.parametrize("with_label", [True, False])
def test_frames_are_captioned_with_the_slice_then_each_panel_s_title(with_label):
    from swinbob.viz import render_frames
    shape = (16, 20, 3)  # black image, empty prediction and ground truth: only the captions are drawn
    zeros = np.zeros(shape, np.uint8)
    label = zeros if with_label else None
    frames = render_frames(zeros.astype(np.float32), zeros, label, {}, GifSettings(frames=2), spacing=(1.0, 2.0, 1.0))
    # 1 mm columns, 2 mm rows: 2 row repeats per column, then 4x to reach 128 rows: 160 x 64 panels
    titles = ["prediction", "ground truth"] if with_label else ["prediction"]
    width = 64 * (1 + len(titles)) + LEGEND_WIDTH
    assert len(frames) == 2 and all(frame.shape == (160, width, 3) for frame in frames)
    for frame, z in zip(frames, (0, 2)):
        texts = [(0, f"slice {z}/2")] + [(64 * (i + 1), title) for i, title in enumerate(titles)]
        assert np.array_equal(frame, _captioned(width, 160, texts))


def test_the_legend_lists_the_classes_shown_but_not_the_ignore_label():
    from swinbob.viz import render_frames
    shape = (16, 20, 3)
    label = np.zeros(shape, np.uint8)
    label[:4], label[8:] = 255, 2  # ground truth with an ignored band and class 2
    frames = render_frames(np.zeros(shape, np.float32), np.zeros(shape, np.uint8), label, {2: "kidney"}, GifSettings(frames=1))
    legend = frames[0][:, -LEGEND_WIDTH:]
    assert legend[8, 9].tolist() == list(class_colour(2))  # class 2's swatch on the first row
    assert not legend[16:].any()  # and no second row


def test_gifs_loop_forever_at_the_settings_frame_duration(tmp_path):
    from PIL import Image
    from swinbob.viz import write_gif
    shape = (8, 8, 4)
    image = np.broadcast_to(np.arange(4, dtype=np.float32), shape)  # a different grey on every slice
    for duration, milliseconds in ((0.2, 200), (10.0, 10000)):
        path = write_gif(tmp_path / f"{duration}.gif", image, np.zeros(shape, np.uint8), None, np.eye(4), {},
                         GifSettings(frames=4, duration=duration))
        with Image.open(path) as gif:
            assert gif.n_frames == 4 and gif.info["loop"] == 0 and gif.info["duration"] == milliseconds


@pytest.mark.parametrize("values, dtype", [
    ([], np.uint8), ([0, 255], np.uint8), ([3, 7], np.uint8), ([300], np.int16), ([0, 256], np.int16),
    ([256], np.int16), ([-1, 3], np.int16),
])
def test_label_files_are_uint8_when_every_label_fits_else_int16(values, dtype):
    from swinbob.infer.outputs import label_dtype
    assert label_dtype(np.array(values, dtype=np.int64)) == np.dtype(dtype)


def test_a_prediction_takes_the_input_s_header_but_not_its_intensity_scaling(tmp_path):
    from swinbob.infer.outputs import write_prediction
    reference = tmp_path / "image.nii.gz"
    intensities = np.linspace(-5000, 100000, 240, dtype=np.float32).reshape(4, 5, 6, 2)  # two channels
    image = nib.Nifti1Image(intensities, NON_RAS)
    image.set_data_dtype(np.int16)  # stored scaled: slope and intercept in the header
    image.set_qform(NON_RAS, code=1)
    image.set_sform(NON_RAS, code=2)
    nib.save(image, reference)
    assert nib.load(reference).dataobj.slope != 1.0
    labels = np.arange(120).reshape(4, 5, 6) % 4
    write_prediction(tmp_path / "pred.nii.gz", labels, reference)
    written = nib.load(tmp_path / "pred.nii.gz")
    assert written.get_data_dtype() == np.uint8 and written.shape == (4, 5, 6)
    assert np.array_equal(np.asanyarray(written.dataobj), labels)  # read with the file's scaling: the labels
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2)  # the input's codes
    assert np.allclose(written.affine, NON_RAS)
    with pytest.raises(ValueError) as caught:
        write_prediction(tmp_path / "bad.nii.gz", labels[:3], reference)
    assert str(caught.value) == f"prediction shape (3, 5, 6) differs from the input image's (4, 5, 6) ({reference})"
    assert not (tmp_path / "bad.nii.gz").exists()


def test_labels_go_back_to_the_input_grid_as_integers(tmp_path):
    from swinbob.data.transforms import eval_transforms
    from swinbob.files import write_nifti
    from swinbob.infer.outputs import invert_labels
    write_nifti(tmp_path / "image.nii.gz", np.ones((6, 7, 8), np.float32), NON_RAS)
    task = get_task("btcv")
    preprocess = eval_transforms(task, DataConfig.from_task(task, spacing=(3.0, 3.0, 3.0)), with_label=False)
    image = preprocess({"image": str(tmp_path / "image.nii.gz")})["image"]
    labels = torch.full(image.shape[1:], 300, dtype=torch.int16)
    back = invert_labels(labels, image, preprocess)
    assert back.dtype == np.int16 and back.shape == (6, 7, 8) and (back == 300).all()


@pytest.mark.parametrize("scores, mode, expected, dtype", [
    ([[2.0, 0.5], [1.0, 3.0]], "softmax", [0, 1], torch.int16),  # argmax over channels
    ([[0.5, 0.0, -0.5]], "regions", [1, 0, 0], torch.uint8),  # logits by default: above 0, not at 0
])
def test_labels_by_default_are_argmax_or_region_logits_above_zero_with_et_as_3(scores, mode, expected, dtype):
    from swinbob.infer.outputs import to_labels
    scores = torch.tensor(scores)[..., None, None]
    if mode == "regions":  # TC, WT, ET all the same: ET where they are positive
        scores = scores.expand(3, -1, -1, -1)
        expected = [3 * e for e in expected]
    labels = to_labels(scores, mode)
    assert labels.dtype == dtype and labels.flatten().tolist() == expected
    if mode == "regions":
        ordered = to_labels(scores, mode, region_labels=(1, 2, 5))
        assert ordered.flatten().tolist() == [5, 0, 0]
